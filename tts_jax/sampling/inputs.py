"""Checks of what a generation call is given, shared by `sample` and the particle engine:
each bad input gets an error naming it (never a NaN or a silent wrap-around later)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def check_prompt_batch(lm, tokens, lengths, max_new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32[B, Tp], lengths int32[B]) as numpy, after checking: rank 2 with one length
  per row, lengths in [1, Tp], every real token id in [0, vocab), longest prompt +
  max_new_tokens within the model's context, max_new_tokens an int >= 1."""
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
  if isinstance(tokens, jax.core.Tracer) or isinstance(lengths, jax.core.Tracer):  # under a caller's trace:
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:                      # shapes only
      raise ValueError(f"prompts must be int32[B, Tp] with prompt_lengths int32[B]; got {tokens.shape} and "
                       f"{lengths.shape}")
    return tokens, lengths
  tokens, lengths = np.asarray(tokens), np.asarray(lengths)
  if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
    raise ValueError(f"prompts must be int32[B, Tp] with prompt_lengths int32[B]; got {tokens.shape} and "
                     f"{lengths.shape}")
  if not np.issubdtype(tokens.dtype, np.integer) or not np.issubdtype(lengths.dtype, np.integer):
    raise ValueError(f"prompt tokens and lengths must be integers, got {tokens.dtype} and {lengths.dtype}")
  tokens, lengths = tokens.astype(np.int32), lengths.astype(np.int32)
  if (lengths < 1).any() or (lengths > tokens.shape[1]).any():
    raise ValueError(f"prompt_lengths must be in [1, {tokens.shape[1]}], got {lengths.tolist()}")
  vocab = lm.vocab_size
  valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
  bad = np.argwhere(valid & ((tokens < 0) | (tokens >= vocab)))
  if len(bad):
    i, j = bad[0]
    raise ValueError(f"prompt {i} has token id {tokens[i, j]} at position {j}, outside the vocabulary [0, {vocab})")
  longest, limit = int(lengths.max()), lm.max_length
  if longest + max_new_tokens > limit:
    raise ValueError(f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's context of "
                     f"{limit} tokens (max_length)")
  return tokens, lengths


def check_token_ids(lm, **named: Sequence[int]) -> None:
  """Every id of every named list (stop tokens, delimiters, pad) is in [0, vocab)."""
  for name, ids in named.items():
    for i in ids:
      if not 0 <= int(i) < lm.vocab_size:
        raise ValueError(f"{name} holds token id {int(i)}, outside the vocabulary [0, {lm.vocab_size})")


def prompt_keys(key, b: int) -> jax.Array:
  """One typed PRNG key per prompt: `key` [B] as given, or fold_in(key, i) of a single key."""
  keys = jnp.asarray(key)
  if not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
    raise ValueError("key must be a typed PRNG key (jax.random.key(seed)), not raw uint32 key data "
                     "(jax.random.PRNGKey); wrap it with jax.random.wrap_key_data")
  if keys.shape == ():
    return jax.vmap(lambda i: jax.random.fold_in(keys, i))(jnp.arange(b))
  if keys.shape != (b,):
    raise ValueError(f"key must be one PRNG key or one per prompt ({b}), got shape {keys.shape}")
  return keys
