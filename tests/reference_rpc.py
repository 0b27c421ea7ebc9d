"""The host reference of RPC (numpy + scipy, one problem at a time): what the library ran
before `tts_jax.selection.rpc` moved on device; the tests check the JAX version against it.

RPC: Perplexity Consistency with Reasoning Pruning (Zhou et al., NeurIPS 2025).

Each sample's confidence is its probability p_i = exp(mean token log-prob).
Reasoning Pruning fits a two-component Weibull mixture to the p_i of a problem
and drops samples that belong to the low-probability component and lie below the
mean p. Perplexity Consistency scores each answer by the sum of p_i over its
*distinct* remaining samples (identical completions count once, so the score
estimates the answer's probability mass) and picks the highest. Host code
(numpy + scipy's optimiser), run per problem.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import gamma


def _weibull_pdf(x, k, lam):
  with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # the optimiser probes extremes
    return np.nan_to_num((k / lam) * (x / lam) ** (k - 1) * np.exp(-((x / lam) ** k)), nan=0.0, posinf=0.0)


def _mixture_nll(theta, x):
  w, k1, l1, k2, l2 = theta
  pdf = w * _weibull_pdf(x, k1, l1) + (1 - w) * _weibull_pdf(x, k2, l2)
  return -np.sum(np.log(np.maximum(pdf, 1e-300)))


def prune_mask(probs: np.ndarray) -> np.ndarray:
  """bool[N]: samples kept by Reasoning Pruning (all kept when N < 4 or probs are constant)."""
  probs = np.asarray(probs, np.float64)
  if len(probs) < 4 or np.ptp(probs) <= 1e-12:
    return np.ones(len(probs), bool)
  x = np.clip(probs, 1e-12, None)
  fit = minimize(_mixture_nll, [0.5, 1.0, 1.0, 1.5, 2.0], args=(x,),
                 bounds=[(0.2, 0.8), (0.01, None), (0.01, None), (0.01, None), (0.01, None)])
  w, k1, l1, k2, l2 = fit.x
  if l1 * gamma(1 + 1 / k1) < l2 * gamma(1 + 1 / k2):  # component 1 = the high-probability one
    w, k1, l1, k2, l2 = 1 - w, k2, l2, k1, l1
  p1, p2 = w * _weibull_pdf(x, k1, l1), (1 - w) * _weibull_pdf(x, k2, l2)
  return ~((p1 < p2) & (probs < probs.mean()))


def rpc_select(answers: np.ndarray, mean_logprob: np.ndarray, sample_ids: np.ndarray | None = None,
               prune: bool = True) -> int:
  """The answer id RPC picks for one problem (-1 if no sample has an answer).

  Args:
    answers: int[N] answer ids (-1 = none), ids by first appearance.
    mean_logprob: float[N] mean per-token log-prob of each sample under the model.
    sample_ids: int[N] ids of distinct completions (equal ids = identical text); default all distinct.
    prune: apply Reasoning Pruning.

  Ties go to the answer that appeared first.
  """
  answers = np.asarray(answers)
  probs = np.exp(np.asarray(mean_logprob, np.float64))
  keep = prune_mask(probs) if prune else np.ones(len(probs), bool)
  keep &= answers >= 0
  if not keep.any():
    keep = answers >= 0
    if not keep.any():
      return -1
  sample_ids = np.arange(len(answers)) if sample_ids is None else np.asarray(sample_ids)
  scores: dict[int, float] = {}
  seen: set[tuple[int, int]] = set()
  for a, p, s, k in zip(answers, probs, sample_ids, keep):
    if not k or (a, s) in seen:
      continue
    seen.add((a, s))
    scores[int(a)] = scores.get(int(a), 0.0) + p
  best = max(scores.values())
  return min(a for a, v in scores.items() if v == best)
