"""Slim-SC (Hong et al. 2025) as a pool method: self-consistency whose redundant chains are
stopped at the thought where they repeat an earlier one (`tts_jax.selection.thoughts`).

The chains of a subset start together; at each step, in drawing order, a running chain whose
latest thought is at least `threshold` similar (token n-gram Jaccard) to an earlier running
chain's is stopped there and drops out of the vote. Chains are independent, so this is exact
on the pre-drawn pool (each stopped chain is its drawn tokens cut at that thought): accuracy
over random subsets as for the other votes, and the cost counts only the tokens generated.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.eval.batch import Batch
from tts_jax.eval.cost import chains_cost
from tts_jax.eval.method import Outcome
from tts_jax.eval.pool_methods import PoolMethod, _outcome, _subset_ranks, _summarise, _vote
from tts_jax.selection.thoughts import prune_redundant, pruned_lengths, thought_similarity
from tts_jax.tasks import task_tokens


@dataclasses.dataclass(frozen=True)
class SlimSC(PoolMethod):
  """Slim-SC random pruning: threshold in [0, 1] (1: only identical thoughts), n-gram size of
  the similarity, and the steps compared (the first `max_steps` thoughts)."""

  threshold: float = 0.95
  ngram: int = 2
  max_steps: int = 16
  name: str = "Slim-SC"

  def check_budgets(self, budgets) -> None:
    if not 0.0 <= self.threshold <= 1.0:
      raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}")
    if self.ngram < 1 or self.max_steps < 1:
      raise ValueError(f"ngram and max_steps must be >= 1, got {self.ngram}, {self.max_steps}")

  def evaluate_pool(self, pool, budgets, ranks, sim=None, ends=None):
    """As `PoolMethod.evaluate_pool` with the pool's thought similarities `sim` float[P, T, n,
    n] and ends int[P, n, T] (`thought_similarity`); also returns the tokens each chain
    generates int32[K, P, S, n] and the subset weights float32[K, S]."""
    ranks, weights, exact = _subset_ranks(False, budgets, ranks)
    arrays = {"answers": jnp.asarray(pool.answers), "correct": jnp.asarray(pool.correct),
              "lengths": jnp.asarray(pool.lengths)}
    out = _evaluate_slim(arrays, jnp.asarray(sim), jnp.asarray(ends), ranks, jnp.asarray(budgets, jnp.int32),
                         jnp.asarray(weights), jnp.asarray(exact), self.threshold)
    return out + (weights,)

  def evaluate(self, batch: Batch, index: int) -> dict[int, list[Outcome]]:
    budgets, p, rows = batch.experiment.budgets, len(batch.problems), batch.experiment.batch_problems
    pool = batch.pool().padded(rows)
    comps = batch.completions
    with batch.timer.phase("host: text and grading"):
      sim, ends = thought_similarity(comps.tokens, comps.lengths, task_tokens(batch.task).steps, self.max_steps,
                                     self.ngram)
    pad = lambda x: np.concatenate([x, np.repeat(x[:1], rows - p, axis=0)])  # noqa: E731
    acc, used, mc_var, stopped, lengths, weights = jax.device_get(
        self.evaluate_pool(pool, budgets, batch.subset_ranks(budgets), pad(sim), pad(ends)))
    costs = chains_cost(batch.models.policy.config, pool.prompt_lens[:p], lengths[:, :p], weights)
    return {k: [Outcome(accuracy=acc[b, i], samples=used[b, i], mc_var=mc_var[b, i], cost=costs[b][i],
                        extra=(("stopped", float(stopped[b, i])),)) for i in range(p)] for b, k in enumerate(budgets)}


@functools.partial(jax.jit, static_argnames=("threshold",))
def _evaluate_slim(arrays, sim, ends, ranks, ks, weights, exact, threshold):
  def one_budget(rank, k, w, ex):
    member = rank < k
    stopped_at = prune_redundant(sim[:, None], ends[:, None], rank, member, threshold)
    voters = member & (stopped_at < 0)
    out = _outcome(arrays["answers"], arrays["correct"], rank, voters, _vote(arrays["answers"], voters))
    used = jnp.broadcast_to(k, out.shape).astype(jnp.float32)
    acc, samples, var = _summarise(out, used, w, ex)
    lengths = jnp.where(member, pruned_lengths(ends[:, None], arrays["lengths"][:, None], stopped_at), 0)
    stopped = _summarise(jnp.sum(member & (stopped_at >= 0), -1).astype(jnp.float32), used, w, ex)[0]
    return acc, samples, var, stopped, lengths

  return jax.vmap(one_budget)(ranks, ks, weights, exact)
