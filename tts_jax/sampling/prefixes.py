"""Continuing completions from a point inside them: prompt + kept prefix as new prompt rows,
and a kept prefix spliced with a newly drawn suffix (MCMC moves, tree expansions)."""

from __future__ import annotations

import jax.numpy as jnp


def suffix_prompts(prompt_tokens, prompt_lengths, tokens, keep, pad_id: int):
  """Rows prompt + tokens[:keep] (right-padded): int32[R, Tp + T] and int32[R] lengths, from
  prompts int32[R, Tp] (lengths int32[R]), completions int32[R, T] and keep int32[R]."""
  r, tp = prompt_tokens.shape
  t = tokens.shape[1]
  j = jnp.arange(tp + t)[None, :]
  from_completion = jnp.take_along_axis(tokens, jnp.clip(j - prompt_lengths[:, None], 0, t - 1), axis=1)
  rows = jnp.where(j < prompt_lengths[:, None],
                   jnp.pad(prompt_tokens, ((0, 0), (0, t))),
                   jnp.where(j < (prompt_lengths + keep)[:, None], from_completion, pad_id))
  return rows.astype(jnp.int32), (prompt_lengths + keep).astype(jnp.int32)


def splice(tokens, keep, suffix, suffix_lengths, pad_id: int):
  """tokens[:keep] + suffix[:suffix_length] per row, padded: (int32[R, T], int32[R])."""
  t = tokens.shape[1]
  j = jnp.arange(t)[None, :]
  from_suffix = jnp.take_along_axis(suffix, jnp.clip(j - keep[:, None], 0, suffix.shape[1] - 1), axis=1)
  total = keep + suffix_lengths
  out = jnp.where(j < keep[:, None], tokens, jnp.where(j < total[:, None], from_suffix, pad_id))
  return out.astype(jnp.int32), total.astype(jnp.int32)
