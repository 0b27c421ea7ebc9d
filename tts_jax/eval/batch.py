"""What every method of one runner batch shares: problems, prompts, models, a lazy pool, keys.

The pool (max(budgets) samples per problem) is drawn, graded and scored at most once per
batch and only when a method asks for it; each verifier model scores it at most once.
Random streams (all pure in the experiment seed, the problem's index in the split, the
budget and the method's index, so they do not depend on the batching):

  pool samples        problem i: fold_in(key(seed), i)
  pool-method subsets problem i: fold_in(fold_in(key(seed + 1), i), budget), the same for every
                      pool method (common random numbers: methods differ only by their rule)
  search runs         problem i: fold_in(fold_in(fold_in(key(seed + 2), method), budget), i)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.eval.cost import Cost, pool_cost
from tts_jax.eval.experiment import Experiment
from tts_jax.eval.group import BatchGroup
from tts_jax.eval.pool import Pool, build_pool
from tts_jax.eval.subsets import random_ranks
from tts_jax.eval.timing import Timer
from tts_jax.tasks import Completions, DefaultModels


@dataclasses.dataclass
class Batch:
  """Problems [start, start + len(problems)) of the experiment's split: slot `slot` of its
  `BatchGroup` (`tts_jax.eval.group`), which does the device work (sampling, verifier
  scoring, search) of the group's batches together over a mesh's data axis.

  prompt_width: the padded prompt width of every batch of the run (the runner sets it from
  all the run's prompts, so sampling, scoring and search compile once per run; None: this
  batch's own); timer: where the time goes (`tts_jax.eval.timing`); mesh: a
  `tts_jax.parallel` mesh (None: one device). Built alone (no `group`), a batch is a group
  of one.
  """

  experiment: Experiment
  models: DefaultModels
  problems: list
  start: int
  prompt_width: int | None = None
  timer: Timer = dataclasses.field(default_factory=Timer)
  group: BatchGroup | None = None
  slot: int = 0
  _scored: set = dataclasses.field(default_factory=set)
  _ranks: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.group is None:
      self.group = BatchGroup(self.experiment, self.models, [self.problems], self.start // self.experiment.batch_problems,
                              prompt_width=self.prompt_width, timer=self.timer)

  @property
  def task(self):
    return self.experiment.task

  @functools.cached_property
  def prompts(self) -> list[list[int]]:
    """The problems' prompt token ids (`tts_jax.tasks.prompt_ids`), the group's rows."""
    return self.group.prompts[self.group.rows(self.slot)][:len(self.problems)]

  @functools.cached_property
  def completions(self) -> Completions:
    """max(budgets) samples of every problem."""
    rows = self.group.rows(self.slot)
    c = self.group.completions
    return Completions(**{f.name: getattr(c, f.name)[rows][:len(self.problems)] for f in dataclasses.fields(c)})

  @functools.cached_property
  def _pool(self) -> Pool:
    comps = self.completions
    with self.timer.phase("host: text and grading"):
      return build_pool(self.task, self.problems, self.prompts, comps)

  def use_pool(self, pool: Pool, verifiers: tuple[str, ...], completions: Completions) -> None:
    """Makes `pool` (built from `completions`, holding the scores of `verifiers`) this
    batch's pool instead of the group's samples: a stand-in of the run's shapes
    (`tts_jax.eval.warmup`); the group then draws nothing for this batch."""
    self.__dict__.update(_pool=pool, completions=completions)  # the cached properties' slots
    self._scored.update(verifiers)

  def pool(self, verifiers: tuple[str, ...] = ()) -> Pool:
    """The graded pool, with the scores of `verifiers` ("orm", "prm")."""
    pool, p = self._pool, len(self.problems)
    for v in verifiers:
      if v not in self._scored:
        scores = self.group.verifier_scores(v, self.slot)
        if v == "orm":
          pool.orm = scores[:p]
        else:
          pool.prm_steps, pool.prm_mask = scores[0][:p], scores[1][:p]
        self._scored.add(v)
    return pool

  def search(self, method, index: int, budget: int):
    """The final particles (host arrays) of search `method` (experiment method `index`) at
    `budget`: int[batch_problems, ...] rows, padding rows (copies of the first problem) last."""
    p = self.group.search(method, index, budget)
    return jax.tree.map(lambda x: x[self.group.rows(self.slot)], p)

  def start_searches(self, method, index: int, budgets) -> None:
    """Starts `method`'s engine runs at `budgets` for the whole group (`BatchGroup.start_searches`)."""
    self.group.start_searches(method, index, budgets)

  def pool_cost(self, used, verifiers: tuple[str, ...]) -> list[list[Cost]]:
    """Expected compute ([K][P]) of `used` float[K, P] pool samples scored by `verifiers`."""
    pool = self._pool
    return pool_cost(self.models.policy.config, [getattr(self.models, v).config for v in verifiers],
                     pool.prompt_lens, pool.lengths, used)

  def subset_ranks(self, budgets) -> jax.Array:
    """int32[K, batch_problems, num_subsets, n] random subset orders over the pool at each
    of `budgets` (`tts_jax.eval.subsets.random_ranks`; rows past the batch pad), drawn once
    per batch and shared by every pool method: methods are compared on the same subsets."""
    budgets = tuple(budgets)
    if budgets not in self._ranks:
      exp = self.experiment
      keys = _subset_keys(jax.random.key(exp.seed + 1), jnp.asarray(budgets, jnp.int32),
                          jnp.arange(exp.batch_problems) + self.start)
      self._ranks[budgets] = random_ranks(keys, max(exp.budgets), exp.num_subsets)
    return self._ranks[budgets]


@jax.jit
def _subset_keys(root, budgets, ids):
  one = lambda i, k: jax.random.fold_in(jax.random.fold_in(root, i), k)  # noqa: E731
  return jax.vmap(lambda k: jax.vmap(lambda i: one(i, k))(ids))(budgets)
