"""Experiment configs: model + task + methods + budgets + seeds, as frozen dataclasses.

An experiment file (experiments/<task>/<name>.py) builds one `Experiment` named
`config`; it holds no logic. `tts-jax run FILE --set key=value` runs it.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How the pool is sampled (see `tts_jax.sampling.process_logits`)."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0
  max_new_tokens: int = 96


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A scaling experiment over a task split.

  Attributes:
    name: used for titles and the default output directory.
    task: a task dataclass (e.g. ModChain()).
    models: "default" (the task's shipped policy/ORM/PRM) or a directory laid out like
      tts_jax/tasks/defaults/<task> (policy/, orm/, prm/).
    methods: selection methods (tts_jax.eval.methods).
    budgets: sample budgets N; the pool has max(budgets) samples per problem.
    split: the task split; num_problems: its first problems used.
    sampling: how samples are drawn.
    seed: pool sampling and Monte Carlo seed.
    num_subsets: Monte Carlo subsets per problem and budget for voting methods.
    batch_problems: problems per sampling batch (a fixed partition: part of the resume contract).
    out_dir: results.jsonl, summary.json and the plot go here.
  """

  name: str
  task: Any
  methods: tuple[Any, ...]
  budgets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
  models: str = "default"
  split: str = "test"
  num_problems: int = 200
  sampling: SamplingConfig = SamplingConfig()
  seed: int = 0
  num_subsets: int = 64
  batch_problems: int = 25
  out_dir: str = ""

  def __post_init__(self):
    if not self.budgets or any(not isinstance(b, int) or b < 1 for b in self.budgets):
      raise ValueError(f"budgets must be positive ints, got {self.budgets!r}")
    if list(self.budgets) != sorted(set(self.budgets)):
      raise ValueError(f"budgets must be strictly increasing, got {self.budgets!r}")
    if not self.methods:
      raise ValueError("an experiment needs at least one method")
    names = [m.name for m in self.methods]
    if len(set(names)) != len(names):
      raise ValueError(f"method names must be unique, got {names}")
    for m in self.methods:
      if hasattr(m, "check_budgets"):
        m.check_budgets(self.budgets)
    if self.num_problems < 1 or self.batch_problems < 1 or self.num_subsets < 1:
      raise ValueError("num_problems, batch_problems and num_subsets must be >= 1")

  @property
  def output_dir(self) -> str:
    return self.out_dir or f"runs/{self.name}"
