"""How well a verifier ranks: ROC AUC overall and within groups (samples of one problem)."""

from __future__ import annotations

import numpy as np


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
  boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1  # average ranks over ties
  starts = np.concatenate([[0], boundaries])
  ends = np.concatenate([boundaries, [len(scores)]])
  for s, e in zip(starts, ends):
    ranks[order[s:e]] = (s + e + 1) / 2.0
  return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def within_group_auc(scores, labels, groups) -> float:
  """Mean over groups (e.g. problems) of the ROC AUC among the group's samples; groups with
  one class only are skipped. NaN when every group is. This is what best-of-N needs: telling
  apart samples of the same problem, not easy problems from hard ones."""
  scores, labels, groups = np.asarray(scores), np.asarray(labels, bool), np.asarray(groups)
  aucs = [roc_auc(scores[groups == g], labels[groups == g]) for g in np.unique(groups)]
  aucs = [a for a in aucs if a == a]
  return float(np.mean(aucs)) if aucs else float("nan")
