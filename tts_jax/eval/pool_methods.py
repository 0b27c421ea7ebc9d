"""Pool methods: select among pre-drawn samples (frozen config dataclasses).

Each is an experiment method (`tts_jax.eval.method.Method`): `evaluate(batch, index)`
reads the batch's shared pool and returns every budget's outcomes. Its core,
`evaluate_pool(pool, budgets, ranks)` (ranks: int32[K, P, S, n] random subset orders per
budget and problem, shared by all the batch's pool methods, `Batch.subset_ranks`), returns (accuracy, samples used, Monte Carlo variance of each problem's
accuracy estimate), each float[K, P], as expectations over k-subsets of the pool (drawn
without replacement): exact for pass@k and best-of-k, and for the other methods whenever
all C(n, k) subsets fit in `num_subsets` (they are then enumerated), Monte Carlo over
`num_subsets` random subsets (in random order) otherwise. A voting method picks an
answer; the outcome is the correctness of the first sample in the subset that gave it.

All of it is array code: one jitted call per method and batch evaluates every budget
(subsets are rank arrays of one shape for every k, `tts_jax.eval.subsets`), vmapped over
budgets, problems and subsets. Only RPC, whose Weibull-mixture fit scales with the subset
size, gathers each budget's subsets to its own width (still one program for all budgets).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.eval.batch import Batch
from tts_jax.eval.method import Outcome
from tts_jax.eval.metrics import best_of_k_exact, pass_at_k
from tts_jax.eval.pool import Pool
from tts_jax.eval.subsets import enumerable, enumerated_ranks, inverse_permutation
from tts_jax.verifiers.corruption import check_verifier_auc
from tts_jax.selection import (adaptive_consistency, inverse_entropy_weights, rpc_compiler_options, rpc_vote,
                               shortest_majority_scores, subset_vote_totals, winner)

Verifier = Literal["orm", "prm", "oracle"]  # "oracle": the exact outcome checker, corrupted by verifier_auc < 1
Aggregate = Literal["last", "min", "prod", "mean"]


@dataclasses.dataclass(frozen=True)
class PoolMethod(abc.ABC):
  """Base of the pool methods. Subclasses define `evaluate_pool` (and `verifiers` if they
  read verifier scores)."""

  name: str = "pool method"
  timing_phase = "selection and metrics"  # where the runner's time breakdown counts this method

  def verifiers(self) -> tuple[str, ...]:
    """The shipped verifiers this method reads ("orm", "prm")."""
    return ()

  def check_budgets(self, budgets) -> None:
    """Every budget works for a pool method."""

  uses_subsets = True  # reads the random subsets (False: exact in closed form)

  @abc.abstractmethod
  def evaluate_pool(self, pool: Pool, budgets: tuple[int, ...], ranks):
    """ranks: int32[K, P, S, n] random subset orders (`tts_jax.eval.subsets`), or None for a
    method with `uses_subsets = False` -> (accuracy, samples used, Monte Carlo variance), each
    float[K, P] for K budgets."""

  def evaluate(self, batch: Batch, index: int) -> dict[int, list[Outcome]]:
    budgets, p = batch.experiment.budgets, len(batch.problems)
    pool = batch.pool(self.verifiers()).padded(batch.experiment.batch_problems)
    ranks = batch.subset_ranks(budgets) if self.uses_subsets else None
    acc, used, mc_var = jax.device_get(self.evaluate_pool(pool, budgets, ranks))
    costs = batch.pool_cost(used[:, :p], self.verifiers())
    return {k: [Outcome(accuracy=acc[b, i], samples=used[b, i], mc_var=mc_var[b, i], cost=costs[b][i])
                for i in range(p)] for b, k in enumerate(budgets)}


def _budget_array(budgets) -> jax.Array:
  return jnp.asarray(budgets, jnp.int32)


@dataclasses.dataclass(frozen=True)
class PassAtK(PoolMethod):
  """Oracle: some sample among k is correct (unbiased pass@k; an upper bound)."""

  name: str = "pass@k (oracle)"
  uses_subsets = False

  def evaluate_pool(self, pool: Pool, budgets, ranks):
    return _pass_at_k(jnp.asarray(pool.correct), _budget_array(budgets))


@jax.jit
def _pass_at_k(correct, ks):
  acc = pass_at_k(correct.shape[1], correct.sum(1)[None, :], ks[:, None])
  used = jnp.broadcast_to(ks[:, None], acc.shape).astype(jnp.float32)
  return acc, used, jnp.zeros_like(acc)


@dataclasses.dataclass(frozen=True)
class BestOfN(PoolMethod):
  """The sample with the highest verifier score (exact over subsets; score ties split evenly).
  verifier_auc < 1: the "oracle" verifier corrupted to that ROC AUC (a verifier of known quality)."""

  verifier: Verifier = "orm"
  aggregate: Aggregate = "last"
  verifier_auc: float = 1.0
  name: str = "best-of-N (ORM)"
  uses_subsets = False

  def __post_init__(self):
    _check_verifier(self)

  def verifiers(self) -> tuple[str, ...]:
    return () if self.verifier == "oracle" else (self.verifier,)

  def evaluate_pool(self, pool: Pool, budgets, ranks):
    return _best_of_k(pool.verifier_scores(self.verifier, self.aggregate, self.verifier_auc),
                      jnp.asarray(pool.correct), _budget_array(budgets))


def _check_verifier(method) -> None:
  if method.verifier not in ("orm", "prm", "oracle"):
    raise ValueError(f"{type(method).__name__}.verifier must be 'orm', 'prm' or 'oracle', got {method.verifier!r}")
  check_verifier_auc(method)


@jax.jit
def _best_of_k(scores, correct, ks):
  acc = jax.vmap(lambda k: best_of_k_exact(scores, correct, k))(ks)
  used = jnp.broadcast_to(ks[:, None], acc.shape).astype(jnp.float32)
  return acc, used, jnp.zeros_like(acc)


def _subset_ranks(order_free: bool, budgets, ranks):
  """(ranks int32[K, P, S, n], subset weights float32[K, S], exact bool[K]) for `budgets`: the
  random orders `ranks`, with all C(n, k) subsets enumerated instead where they fit in S (and
  order does not matter, or k = 1)."""
  n, num_subsets = ranks.shape[-1], ranks.shape[-2]
  exact = np.array([(order_free or k == 1) and enumerable(n, k, num_subsets) for k in budgets])
  weights = np.ones((len(budgets), num_subsets), np.float32)
  if not exact.any():
    return ranks, weights, exact
  table = np.zeros((len(budgets), num_subsets, n), np.int32)
  for b, k in enumerate(budgets):
    if exact[b]:
      table[b], weights[b] = enumerated_ranks(n, k, num_subsets)
  return _put_rows(ranks, table, exact), weights, exact


@jax.jit
def _put_rows(ranks, table, exact):
  """ranks int32[K, P, S, n] with budget b's subsets replaced by table[b] int32[S, n] (for
  every problem) where exact[b]: one program, not an eager update per budget."""
  return jnp.where(exact[:, None, None, None], table[:, None], ranks)


def _outcome(answers, correct, rank, member, chosen):
  """float32[P, S]: correctness of the first sample (in subset order) whose answer is `chosen`.
  answers, correct: [P, n]; rank, member: [P, S, n]; chosen: int32[P, S]."""
  hit = member & (answers[:, None, :] == chosen[..., None])
  first = jnp.argmin(jnp.where(hit, rank, rank.shape[-1]), axis=-1)
  ok = jnp.take_along_axis(jnp.broadcast_to(correct[:, None, :], hit.shape), first[..., None], axis=-1)[..., 0]
  return (ok & jnp.any(hit, axis=-1) & (chosen >= 0)).astype(jnp.float32)


def _summarise(out, used, weights, exact):
  """Subset outcomes [P, S] -> (accuracy, samples used, Monte Carlo variance), each [P]."""
  total = jnp.sum(weights)
  acc = jnp.sum(out * weights, axis=-1) / total
  var = jnp.sum(weights * (out - acc[:, None]) ** 2, axis=-1) / jnp.maximum(total - 1, 1) / total
  return acc, jnp.sum(used * weights, axis=-1) / total, jnp.where(exact, 0.0, var)


@dataclasses.dataclass(frozen=True)
class _Vote(PoolMethod):
  """Base of the Monte Carlo voting methods: `choose` maps each subset (a membership mask
  and an order over the pool) to an answer id."""

  name: str = "vote"
  order_free = True  # the rule ignores sample order (one subset suffices at k = n)

  @abc.abstractmethod
  def choose(self, arrays: dict, rank, member, k):
    """arrays: the pool's [P, n] arrays; rank, member: [P, S, n]; k: int32 scalar ->
    (answer ids int32[P, S], samples used [P, S])."""

  def evaluate_pool(self, pool: Pool, budgets, ranks):
    ranks, weights, exact = _subset_ranks(self.order_free, budgets, ranks)
    return _evaluate_votes(self, _arrays(pool, self), ranks, _budget_array(budgets), weights, exact)


def _arrays(pool: Pool, method) -> dict:
  out = {f: jnp.asarray(getattr(pool, f)) for f in ("answers", "correct", "lengths", "mean_entropy",
                                                      "mean_logprob", "seq_ids")}
  if getattr(method, "verifier", None) is not None:
    out["scores"] = pool.verifier_scores(method.verifier, getattr(method, "aggregate", "last"),
                                         getattr(method, "verifier_auc", 1.0))
  return out


@functools.partial(jax.jit, static_argnums=0)
def _evaluate_votes(method: _Vote, arrays, ranks, ks, weights, exact):
  def one_budget(rank, k, w, ex):
    member = rank < k
    chosen, used = method.choose(arrays, rank, member, k)
    out = _outcome(arrays["answers"], arrays["correct"], rank, member, chosen)
    return _summarise(out, jnp.broadcast_to(used, out.shape).astype(jnp.float32), w, ex)

  return jax.vmap(one_budget)(ranks, ks, weights, exact)


def _vote(answers, member, weights=None):
  """The answer with the largest total weight in each subset: int32[P, S]. answers [P, n];
  member bool[P, S, n]; weights float[P, n] per pool sample (default 1)."""
  totals = subset_vote_totals(answers, member, weights)
  return winner(totals, jnp.any(member & (answers[:, None, :] >= 0), axis=-1))


def _per_subset(x, member):
  return jnp.broadcast_to(x[:, None, :], member.shape)


@dataclasses.dataclass(frozen=True)
class MajorityVote(_Vote):
  """Self-consistency: the most frequent answer."""

  name: str = "majority vote"

  def choose(self, arrays, rank, member, k):
    return _vote(arrays["answers"], member), k


@dataclasses.dataclass(frozen=True)
class WeightedMajority(_Vote):
  """Answers weighted by verifier probability (PRM steps aggregated by `aggregate`; "oracle":
  the exact outcome checker, corrupted to `verifier_auc` when < 1)."""

  verifier: Verifier = "prm"
  aggregate: Aggregate = "last"
  verifier_auc: float = 1.0
  name: str = "weighted majority (PRM)"

  def __post_init__(self):
    _check_verifier(self)

  def verifiers(self) -> tuple[str, ...]:
    return () if self.verifier == "oracle" else (self.verifier,)

  def choose(self, arrays, rank, member, k):
    return _vote(arrays["answers"], member, arrays["scores"]), k


@dataclasses.dataclass(frozen=True)
class InverseEntropyVote(_Vote):
  """Votes weighted by 1 / mean token entropy of each sample (`inverse_entropy_vote`)."""

  name: str = "inverse-entropy vote"

  def choose(self, arrays, rank, member, k):
    return _vote(arrays["answers"], member, inverse_entropy_weights(arrays["mean_entropy"])), k


@dataclasses.dataclass(frozen=True)
class ShortestMajority(_Vote):
  """Shortest majority vote: count / mean length per answer."""

  name: str = "shortest majority vote"

  def choose(self, arrays, rank, member, k):
    answers = arrays["answers"]
    counts = subset_vote_totals(answers, member)
    total_len = subset_vote_totals(answers, member, arrays["lengths"])
    has = jnp.any(member & (answers[:, None, :] >= 0), axis=-1)
    return winner(shortest_majority_scores(counts, total_len), has), k


@dataclasses.dataclass(frozen=True)
class AdaptiveConsistency(_Vote):
  """Adaptive self-consistency: sample up to k, stop when the Beta rule is confident."""

  threshold: float = 0.95
  name: str = "adaptive self-consistency"
  order_free = False

  def choose(self, arrays, rank, member, k):
    order = inverse_permutation(rank)  # the pool's samples in this subset's drawing order
    in_order = jnp.take_along_axis(_per_subset(arrays["answers"], member), order, axis=-1)
    return adaptive_consistency(in_order, self.threshold, num_answers=member.shape[-1], max_samples=k)


@dataclasses.dataclass(frozen=True)
class RPC(PoolMethod):
  """Perplexity consistency with reasoning pruning, on device (vmapped over problems and
  subsets; the Weibull-mixture fits run batched). max_subsets: a cap below the
  experiment's num_subsets for k > 1 (one fit per subset; None: no cap). Each budget's
  subsets are gathered to [P, S, k] (the fit's cost grows with k); all budgets run in one
  program."""

  prune: bool = True
  max_subsets: int | None = 16
  name: str = "RPC"

  def evaluate_pool(self, pool: Pool, budgets, ranks):
    arrays = _arrays(pool, self)
    num_subsets = ranks.shape[-2]
    ranks, weights, exact = _subset_ranks(True, budgets, ranks)
    caps = []
    for b, k in enumerate(budgets):
      if exact[b]:  # the C(n, k) real subsets only (the padding rows weigh 0)
        caps.append(math.comb(pool.shape[1], k))
      elif k == 1 or self.max_subsets is None:
        caps.append(num_subsets)
      else:
        caps.append(min(num_subsets, self.max_subsets))
    return _rpc_program()(arrays, ranks, jnp.asarray(weights), jnp.asarray(exact), ks=tuple(budgets),
                          caps=tuple(caps), prune=self.prune)


@functools.cache
def _rpc_program():
  """`_rpc_all_budgets` jitted with the fit's XLA options (`rpc_compiler_options`), built at
  first use, once the backend is known."""
  return jax.jit(_rpc_all_budgets, static_argnames=("ks", "caps", "prune"), compiler_options=rpc_compiler_options())


def _rpc_all_budgets(arrays, ranks, weights, exact, ks: tuple[int, ...], caps: tuple[int, ...], prune: bool):
  """Every budget's RPC in one program (one compilation per run, not one per budget; each
  budget's fits keep their own width k): ranks int32[K, P, S, n] -> 3 x float[K, P]."""
  rows = [_rpc_budget(arrays, ranks[b, :, :cap], weights[b, :cap], exact[b], k, prune)
          for b, (k, cap) in enumerate(zip(ks, caps))]
  return tuple(jnp.stack(x) for x in zip(*rows))


def _rpc_budget(arrays, rank, weights, exact, k: int, prune: bool):
  idx = inverse_permutation(rank)[..., :k]  # [P, S, k]: the subset in drawing order
  take = lambda x: jnp.take_along_axis(_per_subset(x, rank), idx, axis=-1)  # noqa: E731
  chosen = rpc_vote(take(arrays["answers"]), take(arrays["mean_logprob"]), take(arrays["seq_ids"]), prune=prune,
                    num_answers=rank.shape[-1])
  out = _outcome(arrays["answers"], arrays["correct"], rank, rank < k, chosen)
  return _summarise(out, jnp.full(out.shape, float(k)), weights, exact)
