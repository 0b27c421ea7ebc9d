"""Steps of a generation and how per-step scores combine.

A step ends at a delimiter token (e.g. ";" or a token containing a blank line) or at
the generation's last token. A process verifier (PRM) scores each step end; one
score per sample is then `aggregate_steps` of them ("last", "min", "prod", "mean").
`accumulate_step` is the same rule applied one step at a time on log-scores (what
the particle engine does while particles grow); the two agree (tested).
"""

from __future__ import annotations

from typing import Literal, Sequence

import jax
import jax.numpy as jnp

Aggregate = Literal["last", "min", "prod", "mean"]
AGGREGATES = ("last", "min", "prod", "mean")


def delimiter_positions(tokens: Sequence[int], start: int, delimiters: Sequence[int]) -> list[int]:
  """Positions >= start of tokens[:] that are step delimiters."""
  delims = set(int(d) for d in delimiters)
  return [i for i in range(start, len(tokens)) if int(tokens[i]) in delims]


def step_ends(tokens: Sequence[int], start: int, delimiters: Sequence[int]) -> list[int]:
  """Positions where the steps of tokens[start:] end: each delimiter, and the last token
  (a final delimiter counts once). Empty when there is no generated token."""
  if len(tokens) <= start:
    return []
  last = len(tokens) - 1
  return [i for i in delimiter_positions(tokens, start, delimiters) if i != last] + [last]


def _check(how: str) -> None:
  if how not in AGGREGATES:
    raise ValueError(f"unknown PRM aggregation {how!r}; use 'last', 'min', 'prod' or 'mean'")


def aggregate_steps(step_scores: jax.Array, step_mask: jax.Array, how: Aggregate) -> jax.Array:
  """PRM step probabilities -> one score per sample.

  Args:
    step_scores: float[..., S] probabilities in [0, 1] at each step.
    step_mask: bool[..., S] marks real steps.
    how: "last" (the final step's score), "min", "prod" (product), "mean".

  Returns:
    float32[...]; 0 for samples with no steps.
  """
  _check(how)
  has = jnp.any(step_mask, axis=-1)
  if how == "last":
    last = jnp.max(jnp.where(step_mask, jnp.arange(step_mask.shape[-1]), -1), axis=-1)
    out = jnp.take_along_axis(step_scores, jnp.maximum(last, 0)[..., None], axis=-1)[..., 0]
  elif how == "min":
    out = jnp.min(jnp.where(step_mask, step_scores, jnp.inf), axis=-1)
  elif how == "prod":
    out = jnp.exp(jnp.sum(jnp.where(step_mask, jnp.log(jnp.maximum(step_scores, 1e-30)), 0.0), axis=-1))
  else:
    out = jnp.sum(jnp.where(step_mask, step_scores, 0.0), axis=-1) / jnp.maximum(jnp.sum(step_mask, axis=-1), 1)
  return jnp.where(has, out, 0.0)


def accumulate_step(how: Aggregate, total: jax.Array, score: jax.Array, steps_so_far: jax.Array) -> jax.Array:
  """The running aggregate after one more step, on log-scores.

  Args:
    how: "last", "min" or "prod" (a sum of log-scores); "mean" has no running form here.
    total: float32[...] the aggregate of the steps so far (ignored when there are none).
    score: float32[...] the new step's log-score.
    steps_so_far: int32[...] how many steps `total` covers.
  """
  if how == "last":
    return score
  if how == "prod":
    return jnp.where(steps_so_far == 0, score, total + score)
  if how == "min":
    return jnp.where(steps_so_far == 0, score, jnp.minimum(total, score))
  raise ValueError(f"aggregate must be 'last', 'prod' or 'min' for incremental scoring, got {how!r}")
