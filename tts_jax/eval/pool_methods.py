"""Pool methods: select among pre-drawn samples (frozen config dataclasses).

Each is an experiment method (`tts_jax.eval.method.Method`): `evaluate(batch, k, index)`
reads the batch's shared pool. Its core, `evaluate_pool(pool, k, keys, num_subsets)`
(keys: one PRNG key per problem), returns
(accuracy float64[P], samples used float64[P], Monte Carlo variance of each problem's
accuracy estimate float64[P]) as expectations over k-subsets of the pool (without replacement): exact for
pass@k and best-of-k, and for the other methods whenever all C(n, k) subsets fit in
`num_subsets` (they are then enumerated), Monte Carlo over `num_subsets` random
subsets (in random order) otherwise. A voting method picks an answer; the outcome is the
correctness of the first sample in the subset that gave that answer.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.eval.batch import Batch
from tts_jax.eval.method import Outcome
from tts_jax.eval.metrics import best_of_k_exact, pass_at_k, subset_indices
from tts_jax.eval.pool import Pool
from tts_jax.selection import (adaptive_consistency, inverse_entropy_vote, majority_vote, rpc_vote,
                               shortest_majority_vote, weighted_majority_vote)

Verifier = Literal["orm", "prm"]
Aggregate = Literal["last", "min", "prod", "mean"]


@dataclasses.dataclass(frozen=True)
class PoolMethod(abc.ABC):
  """Base of the pool methods. Subclasses define `evaluate_pool` (and `verifiers` if they
  read verifier scores)."""

  name: str = "pool method"

  def verifiers(self) -> tuple[str, ...]:
    """The shipped verifiers this method reads ("orm", "prm")."""
    return ()

  def check_budgets(self, budgets) -> None:
    """Every budget works for a pool method."""

  @abc.abstractmethod
  def evaluate_pool(self, pool: Pool, k: int, keys, num_subsets: int):
    """-> (accuracy float64[P], samples used float64[P], Monte Carlo variance float64[P])."""

  def evaluate(self, batch: Batch, budget: int, index: int) -> list[Outcome]:
    pool = batch.pool(self.verifiers())
    acc, used, mc_var = self.evaluate_pool(pool, budget, batch.subset_keys(budget, index),
                                           batch.experiment.num_subsets)
    return [Outcome(accuracy=acc[i], samples=used[i], mc_var=mc_var[i],
                    cost=batch.pool_cost(i, used[i], self.verifiers())) for i in range(len(acc))]


def _take(x: np.ndarray, idx) -> jax.Array:
  return jnp.take_along_axis(jnp.asarray(x)[:, None, :], idx, axis=-1)


def _outcome(pool: Pool, idx, chosen) -> np.ndarray:
  """float[P, S]: correctness of the first sample in each subset whose answer is `chosen`."""
  ans, cor = _take(pool.answers, idx), _take(pool.correct, idx)
  hit = ans == chosen[..., None]
  first = jnp.argmax(hit, axis=-1)
  ok = jnp.take_along_axis(cor, first[..., None], axis=-1)[..., 0] & jnp.any(hit, axis=-1) & (chosen >= 0)
  return np.asarray(ok, np.float64)


@dataclasses.dataclass(frozen=True)
class PassAtK(PoolMethod):
  """Oracle: some sample among k is correct (unbiased pass@k; an upper bound)."""

  name: str = "pass@k (oracle)"

  def evaluate_pool(self, pool: Pool, k: int, keys, num_subsets: int):
    n = pool.shape[1]
    acc = np.array([pass_at_k(n, int(c), k) for c in pool.correct.sum(1)])
    return acc, np.full(len(acc), float(k)), np.zeros(len(acc))


@dataclasses.dataclass(frozen=True)
class BestOfN(PoolMethod):
  """The sample with the highest verifier score (exact over subsets; score ties split evenly)."""

  verifier: Verifier = "orm"
  aggregate: Aggregate = "last"
  name: str = "best-of-N (ORM)"

  def verifiers(self) -> tuple[str, ...]:
    return (self.verifier,)

  def evaluate_pool(self, pool: Pool, k: int, keys, num_subsets: int):
    acc = best_of_k_exact(pool.verifier_scores(self.verifier, self.aggregate), pool.correct, k)
    return acc, np.full(len(acc), float(k)), np.zeros(len(acc))


@dataclasses.dataclass(frozen=True)
class _Vote(PoolMethod):
  """Base of the Monte Carlo voting methods."""

  name: str = "vote"
  order_free = True  # the rule ignores sample order (one subset suffices at k = n)

  @abc.abstractmethod
  def choose(self, pool: Pool, idx):
    """idx int32[P, S, k] subsets -> (answer ids [P, S], samples used [P, S])."""

  def evaluate_pool(self, pool: Pool, k: int, keys, num_subsets: int):
    p, n = pool.shape
    exact = (self.order_free or k == 1) and math.comb(n, k) <= num_subsets
    if exact:  # few enough subsets: enumerate them all (e.g. k = 1 or k = n)
      idx = jnp.broadcast_to(jnp.asarray(list(itertools.combinations(range(n), k)), jnp.int32)[None],
                             (p, math.comb(n, k), k))
    else:
      idx = subset_indices(keys, n, k, num_subsets)
    chosen, used = self.choose(pool, idx)
    out = _outcome(pool, idx, chosen)
    mc_var = np.zeros(p) if exact else out.var(1, ddof=1) / idx.shape[1]
    return out.mean(1), np.asarray(used, np.float64).mean(1), mc_var


@dataclasses.dataclass(frozen=True)
class MajorityVote(_Vote):
  """Self-consistency: the most frequent answer."""

  name: str = "majority vote"

  def choose(self, pool, idx):
    return majority_vote(_take(pool.answers, idx), pool.shape[1]), np.full(idx.shape[:2], idx.shape[-1])


@dataclasses.dataclass(frozen=True)
class WeightedMajority(_Vote):
  """Answers weighted by verifier probability (PRM steps aggregated by `aggregate`)."""

  verifier: Verifier = "prm"
  aggregate: Aggregate = "last"
  name: str = "weighted majority (PRM)"

  def verifiers(self) -> tuple[str, ...]:
    return (self.verifier,)

  def choose(self, pool, idx):
    w = _take(pool.verifier_scores(self.verifier, self.aggregate), idx)
    return weighted_majority_vote(_take(pool.answers, idx), w, pool.shape[1]), np.full(idx.shape[:2], idx.shape[-1])


@dataclasses.dataclass(frozen=True)
class InverseEntropyVote(_Vote):
  """Votes weighted by 1 / mean token entropy of each sample."""

  name: str = "inverse-entropy vote"

  def choose(self, pool, idx):
    return (inverse_entropy_vote(_take(pool.answers, idx), _take(pool.mean_entropy, idx), pool.shape[1]),
            np.full(idx.shape[:2], idx.shape[-1]))


@dataclasses.dataclass(frozen=True)
class ShortestMajority(_Vote):
  """Shortest majority vote: count / mean length per answer."""

  name: str = "shortest majority vote"

  def choose(self, pool, idx):
    return (shortest_majority_vote(_take(pool.answers, idx), _take(pool.lengths, idx), pool.shape[1]),
            np.full(idx.shape[:2], idx.shape[-1]))


@dataclasses.dataclass(frozen=True)
class RPC(_Vote):
  """Perplexity consistency with reasoning pruning, on device (vmapped over problems and
  subsets; the Weibull-mixture fits run batched). max_subsets: a cap below the
  experiment's num_subsets for k > 1 (one fit per subset; None: no cap)."""

  prune: bool = True
  max_subsets: int | None = 16
  name: str = "RPC"

  def evaluate_pool(self, pool: Pool, k: int, keys, num_subsets: int):
    cap = num_subsets if self.max_subsets is None or k == 1 else min(num_subsets, self.max_subsets)
    return super().evaluate_pool(pool, k, keys, cap)

  def choose(self, pool, idx):
    chosen = _rpc(_take(pool.answers, idx), _take(pool.mean_logprob, idx), _take(pool.seq_ids, idx),
                  prune=self.prune, num_answers=pool.shape[1])
    return chosen, np.full(idx.shape[:2], idx.shape[-1])


_rpc = jax.jit(rpc_vote, static_argnames=("prune", "num_answers"))


@dataclasses.dataclass(frozen=True)
class AdaptiveConsistency(_Vote):
  """Adaptive self-consistency: sample up to k, stop when the Beta rule is confident."""

  threshold: float = 0.95
  name: str = "adaptive self-consistency"
  order_free = False

  def choose(self, pool, idx):
    chosen, used = adaptive_consistency(_take(pool.answers, idx), self.threshold, num_answers=pool.shape[1])
    return chosen, np.asarray(used)

