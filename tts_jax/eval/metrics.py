"""Exact metrics over pools of samples, as array code (jittable, vmappable; float32):
unbiased pass@k and best-of-k over k-subsets; and the bootstrap confidence interval of a
summary (host numpy)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np


def pass_at_k(n: int, c, k) -> jax.Array:
  """Unbiased pass@k (Chen et al. 2021) from c correct among n samples, in the stable form
  1 - prod_{i=n-c+1}^{n} (1 - k / i). c, k: int or int[...] (traced is fine) -> float32[...].
  Python ints are checked: 0 <= c <= n and 1 <= k <= n."""
  if isinstance(c, int) and isinstance(k, int) and not (0 <= c <= n and 1 <= k <= n):
    raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  c = jnp.asarray(c, jnp.float32)[..., None]
  kf = jnp.asarray(k, jnp.float32)[..., None]
  i = jnp.arange(1, n + 1, dtype=jnp.float32)
  terms = jnp.where(i > n - c, jnp.log1p(-jnp.minimum(kf / i, 1.0)), 0.0)
  return jnp.where(n - c[..., 0] < kf[..., 0], 1.0, -jnp.expm1(jnp.sum(terms, axis=-1)))


def mean_pass_at_k(correct, k: int) -> float:
  """Mean unbiased pass@k over problems; correct: bool[P, n]."""
  correct = np.asarray(correct, bool)
  return float(jnp.mean(pass_at_k(correct.shape[1], correct.sum(1), k)))


def best_of_k_exact(scores, correct, k) -> jax.Array:
  """Exact E[correct of the top-scored sample] over k-subsets of the n samples (without
  replacement), per problem; ties in score are broken uniformly at random.

  scores: float[P, n]; correct: bool[P, n]; k: int or int32 scalar (traced is fine) -> float32[P].
  The top sample of a random k-subset is the i-th highest (0-based) with probability
  C(n-1-i, k-1) / C(n, k); a tie group shares its probability mass equally.
  """
  scores = jnp.asarray(scores, jnp.float32)
  correct = jnp.asarray(correct, jnp.float32)
  chex.assert_equal_shape([scores, correct])
  n = scores.shape[-1]
  if isinstance(k, int) and not 1 <= k <= n:
    raise ValueError(f"need 1 <= k <= n={n}, got k={k}")
  kf = jnp.asarray(k, jnp.float32)
  # weight_0 = k / n; weight_{i+1} = weight_i (n - k - i) / (n - 1 - i): the i highest are out, sample i is in.
  i = jnp.arange(n - 1, dtype=jnp.float32)
  ratios = jnp.maximum(n - kf - i, 0.0) / (n - 1 - i)
  weight = (kf / n) * jnp.concatenate([jnp.ones(1), jnp.cumprod(ratios)])

  def one(s, c):
    order = jnp.argsort(-s, stable=True)
    s, c = s[order], c[order]
    group = jnp.cumsum(jnp.concatenate([jnp.zeros(1, jnp.int32), (s[1:] != s[:-1]).astype(jnp.int32)]))
    mass = jax.ops.segment_sum(weight, group, num_segments=n)
    hits = jax.ops.segment_sum(c, group, num_segments=n)
    size = jax.ops.segment_sum(jnp.ones(n), group, num_segments=n)
    return jnp.sum(mass * hits / jnp.maximum(size, 1.0))

  return jax.vmap(one)(scores.reshape(-1, n), correct.reshape(-1, n)).reshape(scores.shape[:-1])


def bootstrap_ci(per_problem: np.ndarray, num_resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
  """(mean, low, high): percentile bootstrap over problems of the mean of per-problem values."""
  x = np.asarray(per_problem, np.float64)
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, len(x), size=(num_resamples, len(x)))].mean(1)
  a = (1 - level) / 2
  return float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))
