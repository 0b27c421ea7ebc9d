"""Exact metrics over pools of samples: unbiased pass@k, best-of-k over subsets, subset draws,
bootstrap confidence intervals."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import comb


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k (Chen et al. 2021) from c correct among n samples, in the stable form
  1 - prod_{i=n-c+1}^{n} (1 - k / i)."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(correct: np.ndarray, k: int) -> float:
  """Mean unbiased pass@k over problems; correct: bool[P, n]."""
  correct = np.asarray(correct, bool)
  n = correct.shape[1]
  return float(np.mean([pass_at_k(n, int(c), k) for c in correct.sum(1)]))


def best_of_k_exact(scores: np.ndarray, correct: np.ndarray, k: int) -> np.ndarray:
  """Exact E[correct of the top-scored sample] over k-subsets of the n samples (without
  replacement), per problem; ties in score are broken uniformly at random.

  scores: float[P, n]; correct: bool[P, n] -> float64[P].
  The top sample of a random k-subset is the i-th highest (0-based) with probability
  C(n-1-i, k-1) / C(n, k); a tie group shares its probability mass equally.
  """
  scores, correct = np.asarray(scores, np.float64), np.asarray(correct, np.float64)
  p, n = scores.shape
  if not 1 <= k <= n:
    raise ValueError(f"need 1 <= k <= n={n}, got k={k}")
  weight = comb(n - 1 - np.arange(n), k - 1, exact=False) / comb(n, k, exact=False)  # by rank
  out = np.zeros(p)
  for r in range(p):
    order = np.argsort(-scores[r], kind="mergesort")
    s, c = scores[r, order], correct[r, order]
    i = 0
    while i < n:
      j = i
      while j + 1 < n and s[j + 1] == s[i]:
        j += 1
      out[r] += weight[i:j + 1].sum() * c[i:j + 1].mean()
      i = j + 1
  return out


def subset_indices(keys, n: int, k: int, num_subsets: int):
  """int32[P, S, k]: S random k-subsets of range(n) (without replacement, in random order)
  per problem; problem p uses keys[p] only."""
  u = jax.vmap(lambda key: jax.random.uniform(key, (num_subsets, n)))(keys)
  return jnp.argsort(u, axis=-1)[..., :k]


def bootstrap_ci(per_problem: np.ndarray, num_resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
  """(mean, low, high): percentile bootstrap over problems of the mean of per-problem values."""
  x = np.asarray(per_problem, np.float64)
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, len(x), size=(num_resamples, len(x)))].mean(1)
  a = (1 - level) / 2
  return float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))
