"""Adaptive self-consistency (Aggarwal et al. 2023): stop sampling once the majority is safe.

Samples are taken in order; after each one, with v1 >= v2 the two largest vote counts,
the Beta stopping rule computes P(p1 > p2) for p1/(p1+p2) ~ Beta(v1 + 1, v2 + 1) and
stops when it exceeds `threshold`. The answer is the majority of the samples used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import betainc


def stop_table(n: int, threshold: float) -> jax.Array:
  """bool[n + 1, n + 1]: the Beta rule at top-two counts (v1, v2): P(p1 > p2) > threshold."""
  v = jnp.arange(n + 1, dtype=jnp.float32)
  return (1.0 - betainc(v[:, None] + 1.0, v[None, :] + 1.0, 0.5)) > threshold


def adaptive_consistency(answers: jax.Array, threshold: float = 0.95, min_samples: int = 1,
                         num_answers: int | None = None, max_samples=None) -> tuple[jax.Array, jax.Array]:
  """answers: int32[..., N] in sampling order (-1 = none), ids in [0, num_answers) ->
  (chosen answer id int32[...] (-1 if none), samples used int32[...] in [1, max_samples]).

  max_samples: the budget, int or int32[...] (traced is fine; default N): only the first
  max_samples answers can be drawn. Ties in the majority go to the lowest id (the answer
  that appeared first).

  One pass over the samples in order (`lax.scan`), carrying each row's vote counts and
  its two largest counts, which change by at most one per sample; the Beta rule is a
  table over integer counts (`stop_table`), so no [..., N, A] prefix-count array is built.
  """
  n = answers.shape[-1]
  lead_shape = answers.shape[:-1]
  limit = jnp.broadcast_to(jnp.asarray(n if max_samples is None else max_samples, jnp.int32), lead_shape)
  depth = max(n if num_answers is None else num_answers, 2)
  table = stop_table(n, threshold)
  zeros = jnp.zeros(lead_shape, jnp.int32)
  init = (jnp.zeros(lead_shape + (depth,), jnp.int32), zeros, zeros, jnp.full(lead_shape, -1, jnp.int32),
          jnp.zeros(lead_shape, bool), zeros)

  def step(carry, x):
    counts, v1, v2, lead, done, used = carry
    t, a = x
    active = ~done & (t < limit)
    a = jnp.where(active, a, -1)
    hit = jax.nn.one_hot(a, depth, dtype=jnp.int32)  # all zeros for -1
    counts = counts + hit
    c = jnp.sum(counts * hit, axis=-1)  # the new count of this sample's answer (0 for none)
    new_lead = (c > v1) & (a != lead)
    v2 = jnp.where(new_lead, v1, jnp.where((a != lead) & (c > v2), c, v2))
    v1 = jnp.maximum(v1, c)
    lead = jnp.where(new_lead, a, lead)
    confident = table[v1, v2] & (t + 1 >= min_samples) & (v1 > 0)
    used = jnp.where(active, t + 1, used)
    return (counts, v1, v2, lead, done | (active & confident), used), None

  (counts, _, _, _, _, used), _ = jax.lax.scan(step, init, (jnp.arange(n), jnp.moveaxis(answers, -1, 0)))
  chosen = jnp.where(counts.sum(-1) > 0, jnp.argmax(counts, axis=-1), -1).astype(jnp.int32)
  return chosen, jnp.maximum(used, 1).astype(jnp.int32)
