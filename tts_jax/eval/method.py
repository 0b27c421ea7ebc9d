"""The experiment-method contract: every method of the main job, pool or search, is run the
same way by the runner and reports the same record.

    outcomes = method.evaluate(batch, index)   # {budget: one Outcome per problem of the batch}

`batch` (`tts_jax.eval.batch.Batch`) gives the problems, their prompts, the models,
a shared pool of samples (drawn and scored at most once per batch, only if a method
asks for it) and the PRNG keys of each (method, budget). A method sees all budgets at
once, so it can evaluate them in one compiled call (pool methods do). `index` is the method's
position in the experiment (it seeds the method's own random streams).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

from tts_jax.eval.cost import Cost

if TYPE_CHECKING:  # only for annotations: batch.py imports this module
  from tts_jax.eval.batch import Batch


@dataclasses.dataclass(frozen=True)
class Outcome:
  """One method on one problem at one budget.

  accuracy: the expected correctness of the chosen answer (in [0, 1]); samples: the
  samples used (the budget, or fewer for adaptive methods); mc_var: the Monte Carlo
  variance of `accuracy` when it is estimated over random subsets (0 when exact);
  cost: the compute spent; extra: further per-problem numbers (e.g. resamples).
  """

  accuracy: float
  samples: float
  cost: Cost
  mc_var: float = 0.0
  extra: tuple[tuple[str, float], ...] = ()

  def record(self) -> dict:
    """The JSON-ready record the runner writes."""
    return {"accuracy": float(self.accuracy), "samples": float(self.samples), "mc_var": float(self.mc_var),
            **{k: float(v) for k, v in self.cost.asdict().items()}, **{k: float(v) for k, v in self.extra}}


@runtime_checkable
class Method(Protocol):
  """An experiment method (a frozen dataclass: it is part of the experiment config)."""

  name: str
  timing_phase: str  # the runner's time-breakdown phase ("selection and metrics", "search")

  def verifiers(self) -> tuple[str, ...]:
    """The shipped verifier models it reads ("orm", "prm")."""

  def check_budgets(self, budgets: Sequence[int]) -> None:
    """Raises ValueError now (when the experiment is built) for a budget it cannot run."""

  def evaluate(self, batch: "Batch", index: int) -> dict[int, list[Outcome]]:
    """For each budget of the experiment, one Outcome per problem of the batch."""
