"""Exact metrics over pools of samples."""

from __future__ import annotations

import numpy as np


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


def roc_auc(scores, labels) -> float:
  """Area under the ROC curve: P(score of a random positive > a random negative), ties
  counting 1/2 (the Mann-Whitney U statistic). NaN when a class is empty."""
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels, bool)
  pos, neg = int(labels.sum()), int((~labels).sum())
  if pos == 0 or neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="mergesort")
  ranks = np.empty(len(scores), np.float64)
  sorted_scores = scores[order]
  # Average ranks over ties.
  boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
  starts = np.concatenate([[0], boundaries])
  ends = np.concatenate([boundaries, [len(scores)]])
  for s, e in zip(starts, ends):
    ranks[order[s:e]] = (s + e + 1) / 2.0
  return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))
