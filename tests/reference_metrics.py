"""Host references (numpy, float64, one problem at a time) of the exact pool metrics that
`tts_jax.eval.metrics` computes as array code: what the library ran before they moved on
device; the tests check the JAX versions against them."""

from __future__ import annotations

import numpy as np
from scipy.special import comb


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k: 1 - prod_{i=n-c+1}^{n} (1 - k / i)."""
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def best_of_k_exact(scores, correct, k: int) -> np.ndarray:
  """Exact best-of-k over k-subsets with score ties split evenly, by rank weights
  C(n-1-i, k-1) / C(n, k) over tie groups (float64[P])."""
  scores, correct = np.asarray(scores, np.float64), np.asarray(correct, np.float64)
  p, n = scores.shape
  weight = comb(n - 1 - np.arange(n), k - 1, exact=False) / comb(n, k, exact=False)
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
