"""Adaptive self-consistency (Aggarwal et al. 2023): stop sampling once the majority is safe.

Samples are taken in order; after each one, with v1 >= v2 the two largest vote counts,
the Beta stopping rule computes P(p1 > p2) for p1/(p1+p2) ~ Beta(v1 + 1, v2 + 1) and
stops when it exceeds `threshold`. The answer is the majority of the samples used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import betainc


def adaptive_consistency(answers: jax.Array, threshold: float = 0.95, min_samples: int = 1,
                         num_answers: int | None = None, max_samples=None) -> tuple[jax.Array, jax.Array]:
  """answers: int32[..., N] in sampling order (-1 = none), ids in [0, num_answers) ->
  (chosen answer id int32[...] (-1 if none), samples used int32[...] in [1, max_samples]).

  max_samples: the budget, int or int32[...] (traced is fine; default N): only the first
  max_samples answers can be drawn. Ties in the majority go to the answer that appeared first.
  """
  n = answers.shape[-1]
  limit = jnp.asarray(n if max_samples is None else max_samples, jnp.int32)[..., None]
  answers = jnp.where(jnp.arange(n) < limit, answers, -1)
  depth = max(n if num_answers is None else num_answers, 2)
  counts = jnp.cumsum(jax.nn.one_hot(answers, depth, dtype=jnp.float32), axis=-2)  # [..., N(prefix), A]
  # The two largest counts by two max passes (cheaper than top_k over the answer axis).
  v1 = jnp.max(counts, axis=-1)
  first = jnp.argmax(counts, axis=-1)
  v2 = jnp.max(jnp.where(jnp.arange(depth) == first[..., None], -1.0, counts), axis=-1)
  confident = (1.0 - betainc(v1 + 1.0, v2 + 1.0, 0.5)) > threshold
  confident &= (jnp.arange(n) + 1 >= min_samples) & (v1 > 0) & (jnp.arange(n) < limit)
  stop = jnp.where(jnp.any(confident, axis=-1), jnp.argmax(confident, axis=-1), limit[..., 0] - 1)  # last used
  used_counts = jnp.take_along_axis(counts, stop[..., None, None], axis=-2)[..., 0, :]
  has = used_counts.sum(-1) > 0
  chosen = jnp.where(has, jnp.argmax(used_counts, axis=-1), -1).astype(jnp.int32)
  return chosen, (stop + 1).astype(jnp.int32)
