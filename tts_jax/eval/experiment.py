"""Experiment configs: model + task + methods + budgets + seeds, as frozen dataclasses.

An experiment file (experiments/<task>/<name>.py) builds one `Experiment` named
`config`; it holds no logic. `tts-jax run FILE --set key=value` runs it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tts_jax.sampling import SamplingParams


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A scaling experiment over a task split.

  Attributes:
    name: used for titles and the default output directory.
    task: a task dataclass (e.g. ModChain()).
    models: "default" (the task's shipped policy/ORM/PRM) or a directory laid out like
      tts_jax/tasks/defaults/<task> (policy/, orm/, prm/).
    methods: experiment methods (`tts_jax.eval.Method`: pool methods select among
      pre-drawn samples, search methods run the particle engine).
    budgets: sample budgets N; the pool has max(budgets) samples per problem.
    split: the task split; num_problems: its first problems used.
    sampling: how tokens are drawn (the pool's samples and the search proposals).
    max_new_tokens: the longest generation.
    seed: pool sampling and Monte Carlo seed.
    num_subsets: Monte Carlo subsets per problem and budget for voting methods.
    batch_problems: problems per sampling batch (a fixed partition: part of the resume contract).
    out_dir: results.jsonl, summary.json and the plot go here.
    plot_against: a method field (e.g. "verifier_auc"): also plot accuracy at the largest
      budget against it, one line per family of methods that differ only in that field
      (`tts_jax.eval.summary.plot_against`); methods without it are drawn as references.
  """

  name: str
  task: Any
  methods: tuple[Any, ...]
  budgets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
  models: str = "default"
  split: str = "test"
  num_problems: int = 200
  sampling: SamplingParams = SamplingParams()
  max_new_tokens: int = 96
  seed: int = 0
  num_subsets: int = 64
  batch_problems: int = 25
  out_dir: str = ""
  plot_against: str = ""

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
      m.check_budgets(self.budgets)
    if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
      raise ValueError(f"Experiment.seed must be an int >= 0, got {self.seed!r}")
    if not isinstance(self.sampling, SamplingParams):
      raise ValueError(f"Experiment.sampling must be a SamplingParams, got {type(self.sampling).__name__}")
    if self.plot_against and not any(hasattr(m, self.plot_against) for m in self.methods):
      raise ValueError(f"Experiment.plot_against={self.plot_against!r} is a field of none of the methods")
    for name in ("num_problems", "batch_problems", "num_subsets", "max_new_tokens"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"Experiment.{name} must be an int >= 1, got {v!r}")

  @property
  def output_dir(self) -> str:
    return self.out_dir or f"runs/{self.name}"
