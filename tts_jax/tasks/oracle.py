"""A task's exact step checker as a potential: what a perfect PRM would give.

    potential = step_oracle(task)            # an OraclePotential; params None
    run_smc(..., potential=potential)

A particle is right so far while every finished step is right (the task's exact
`step_labels`) and, once done, its answer is (`verify`). The problem is parsed from
the prompt's own token ids, so the potential has no state outside its arguments.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, Sequence

from tts_jax.tasks.base import completion_text
from tts_jax.verifiers import OraclePotential


@functools.lru_cache(maxsize=4096)
def _problem(task, prompt_ids: tuple[int, ...]):
  """The problem a prompt states: decoded and parsed once per distinct prompt, not per particle."""
  return task.parse_prompt(completion_text(task, prompt_ids))


def prefix_correct(task, problem, text: str, done: bool) -> bool:
  """Whether a (partial) completion is right so far: its whole steps are right and, if it
  is done, so is its answer. A step still being written (no delimiter yet) is not judged."""
  # Every `;`-terminated step is whole (step_labels reads those); the rest is judged once done.
  return all(task.step_labels(problem, text)) and (not done or task.verify(problem, text))


@dataclasses.dataclass(frozen=True)
class TaskChecker:
  """`StepChecker` of a task: (prompt ids, completion ids, done) -> right so far."""

  task: object

  def __call__(self, prompt_ids: Sequence[int], completion_ids: Sequence[int], done: bool) -> bool:
    problem = _problem(self.task, tuple(int(t) for t in prompt_ids))
    return prefix_correct(self.task, problem, completion_text(self.task, completion_ids), done)

  def on_device(self):
    """The same checker as array code, when the task has one (`right_so_far(prompt_tokens,
    prompt_lengths, tokens, lengths, done) -> bool[B, N]`), else None."""
    fn = getattr(self.task, "right_so_far", None)
    return None if fn is None else fn


def step_oracle(task, transform: Literal["log", "logit"] = "log", eps: float = 0.01, auc: float = 1.0,
                seed: int = 0, outcome_only: bool = False) -> OraclePotential:
  """The task's exact checker as a potential: log r or logit r, r = 1 - eps while right, eps after;
  with auc < 1 the checker corrupted to that ROC AUC (`tts_jax.verifiers.oracle`); with
  `outcome_only` it scores finished particles only (the same final phi, no step potentials)."""
  return OraclePotential(TaskChecker(task), transform=transform, eps=eps, auc=auc, seed=seed,
                         outcome_only=outcome_only)
