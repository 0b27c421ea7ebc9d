"""Turning N finished samples into one answer.

Every method works on a batch of problems with static shapes, in jnp (jittable,
vmappable), given:

  answers: int32[..., N] answer ids per sample (-1 = no answer extracted). Ids are
    assigned per problem in order of first appearance (`encode_answers`), so the
    documented tie-break "lowest id" means "the answer that appeared first". Votes
    take `num_answers`, the id range, when the N samples are a subset of a larger pool.
  plus per-method inputs (scores, lengths, log-probs, entropies).

and returning int32[...] the chosen sample index (`best_index`) or the chosen answer id
(votes). A problem whose samples have no answer returns -1.

Tie-breaking (deterministic, documented):
  votes: the highest total wins; ties go to the answer that appeared first.
  best_index: the highest score wins; ties go to the earliest sample.
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np


def encode_answers(answers: Sequence[Sequence[str | None]]) -> tuple[np.ndarray, list[list[str]]]:
  """Answer strings -> (int32[P, N] ids by first appearance, -1 for None; per-problem vocabularies)."""
  ids = np.full((len(answers), max((len(a) for a in answers), default=0)), -1, np.int32)
  vocabs = []
  for p, row in enumerate(answers):
    seen: dict[str, int] = {}
    for n, a in enumerate(row):
      if a is not None:
        ids[p, n] = seen.setdefault(a, len(seen))
    vocabs.append(list(seen))
  return ids, vocabs


def vote_totals(answers: jax.Array, weights: jax.Array | None = None,
                num_answers: int | None = None) -> jax.Array:
  """float32[..., A]: total weight of each answer id (index = id).

  answers: int32[..., N] ids in [0, A) or -1 (counts nowhere); weights: float[..., N]
  (default 1); num_answers: A, the id range (default N: enough when ids were assigned
  within these N samples; pass the pool size when voting on a subset of a pool).
  """
  if weights is not None:
    chex.assert_equal_shape([answers, weights])
  n = answers.shape[-1] if num_answers is None else num_answers
  w = jnp.ones(answers.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
  onehot = jax.nn.one_hot(answers, n, dtype=jnp.float32)  # -1 -> all zeros
  return jnp.einsum("...n,...na->...a", w, onehot)


def subset_vote_totals(answers: jax.Array, member: jax.Array, weights: jax.Array | None = None,
                       num_answers: int | None = None) -> jax.Array:
  """float32[..., S, A]: the vote totals of S subsets of one pool, as one matmul per pool
  (no per-subset one-hot, whose size would be S * n * A).

  answers: int32[..., n] the pool's answer ids (-1 counts nowhere); member: bool[..., S, n]
  which pool samples each subset holds; weights: float[..., n] per pool sample (default 1);
  num_answers: A (default n).
  """
  chex.assert_equal_shape([answers, member[..., 0, :]])
  n = answers.shape[-1] if num_answers is None else num_answers
  w = member.astype(jnp.float32)
  if weights is not None:
    chex.assert_equal_shape([answers, weights])
    w = w * weights.astype(jnp.float32)[..., None, :]
  return jnp.einsum("...sn,...na->...sa", w, jax.nn.one_hot(answers, n, dtype=jnp.float32))


def winner(totals: jax.Array, has_answer: jax.Array) -> jax.Array:
  """int32[...]: the answer id with the largest total (the lowest id on ties), -1 where
  `has_answer` bool[...] is False. totals: float[..., A]."""
  return jnp.where(has_answer, jnp.argmax(totals, axis=-1), -1).astype(jnp.int32)


def shortest_majority_scores(counts: jax.Array, total_lengths: jax.Array) -> jax.Array:
  """float32[..., A]: shortest majority vote's score count / mean length (-inf for no votes),
  from each answer's vote count and summed length."""
  mean_len = total_lengths / jnp.maximum(counts, 1.0)
  return jnp.where(counts > 0, counts / jnp.maximum(mean_len, 1.0), -jnp.inf)


def _argmax_answer(totals: jax.Array, answers: jax.Array) -> jax.Array:
  return winner(totals, jnp.any(answers >= 0, axis=-1))


def majority_vote(answers: jax.Array, num_answers: int | None = None) -> jax.Array:
  """Self-consistency (Wang et al. 2022): the most frequent answer id. int32[..., N] -> int32[...]."""
  return _argmax_answer(vote_totals(answers, None, num_answers), answers)


def weighted_majority_vote(answers: jax.Array, weights: jax.Array, num_answers: int | None = None) -> jax.Array:
  """The answer with the largest total weight (e.g. ORM/PRM probabilities, >= 0)."""
  return _argmax_answer(vote_totals(answers, weights, num_answers), answers)


def best_index(scores: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Index of the highest-scoring sample (first on ties). scores: float[..., N];
  valid: bool[..., N] restricts the choice (e.g. samples with an answer). -> int32[...]."""
  s = scores.astype(jnp.float32)
  if valid is not None:
    chex.assert_equal_shape([scores, valid])
    s = jnp.where(valid, s, -jnp.inf)
  return jnp.argmax(s, axis=-1).astype(jnp.int32)


def inverse_entropy_weights(mean_entropy: jax.Array) -> jax.Array:
  """float32[..., N]: each sample's inverse-entropy vote weight, 1 / mean token entropy."""
  return 1.0 / jnp.maximum(mean_entropy.astype(jnp.float32), 1e-6)


def inverse_entropy_vote(answers: jax.Array, mean_entropy: jax.Array, num_answers: int | None = None) -> jax.Array:
  """Inverse-entropy weighted voting: each sample votes with weight 1 / (its mean token
  entropy); the weights are normalised per problem (which does not change the winner).
  mean_entropy: float[..., N] (nats/token, > 0)."""
  return weighted_majority_vote(answers, inverse_entropy_weights(mean_entropy), num_answers)


def shortest_majority_vote(answers: jax.Array, lengths: jax.Array, num_answers: int | None = None) -> jax.Array:
  """Shortest majority vote (Zeng et al. 2025): answer a scores c(a) / l(a), its vote count
  over the mean length (tokens) of its samples, so a frequent answer reached by shorter
  chains wins. lengths: int/float[..., N]."""
  chex.assert_equal_shape([answers, lengths])
  n = answers.shape[-1] if num_answers is None else num_answers
  onehot = jax.nn.one_hot(answers, n, dtype=jnp.float32)
  counts = jnp.sum(onehot, axis=-2)
  total_len = jnp.einsum("...n,...na->...a", lengths.astype(jnp.float32), onehot)
  return _argmax_answer(shortest_majority_scores(counts, total_len), answers)
