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


def vote(answers, weights=None) -> int:
  """The answer id (>= 0) with the largest total weight, the lowest id on ties; -1 if none."""
  totals: dict[int, float] = {}
  for i, a in enumerate(answers):
    if a >= 0:
      totals[a] = totals.get(a, 0.0) + (1.0 if weights is None else float(weights[i]))
  if not totals:
    return -1
  best = max(totals.values())
  return min(a for a, t in totals.items() if t == best)


def shortest_vote(answers, lengths) -> int:
  """Shortest majority vote: count / max(mean length, 1), the lowest id on ties."""
  counts: dict[int, int] = {}
  total: dict[int, float] = {}
  for a, n in zip(answers, lengths):
    if a >= 0:
      counts[a] = counts.get(a, 0) + 1
      total[a] = total.get(a, 0.0) + float(n)
  if not counts:
    return -1
  score = {a: c / max(total[a] / c, 1.0) for a, c in counts.items()}
  best = max(score.values())
  return min(a for a, s in score.items() if s == best)


def adaptive(answers, threshold: float, budget: int) -> tuple[int, int]:
  """Adaptive self-consistency on answers in drawing order: after each sample, stop when
  1 - I_0.5(v1 + 1, v2 + 1) > threshold (v1 >= v2 the top two counts). -> (answer, used)."""
  from scipy.special import betainc  # noqa: PLC0415
  counts: dict[int, int] = {}
  used = min(budget, len(answers))
  for t in range(used):
    a = answers[t]
    if a >= 0:
      counts[a] = counts.get(a, 0) + 1
    top = sorted(counts.values(), reverse=True) + [0, 0]
    if top[0] > 0 and 1.0 - betainc(top[0] + 1, top[1] + 1, 0.5) > threshold:
      used = t + 1
      break
  return vote(answers[:used]), used


def first_correct(answers, correct, chosen) -> float:
  """Correctness of the first sample (in drawing order) whose answer is `chosen`."""
  for a, c in zip(answers, correct):
    if chosen >= 0 and a == chosen:
      return float(c)
  return 0.0
