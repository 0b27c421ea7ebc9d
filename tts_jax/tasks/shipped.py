"""The shipped default models of a task: policy, ORM and PRM, loaded without training.

    d = tts_jax.tasks.load_default("modchain")
    out = sample(d.policy, d.policy_params, [prompt_ids(d.task, problem)], ...)
    p_correct = outcome_probabilities(d.orm, d.orm_params, sequences)

They live in tts_jax/tasks/defaults/<task>/{policy,orm,prm}/ (config.json +
model.safetensors), with report.json holding their measured quality.
"""

from __future__ import annotations

import dataclasses
import json
import os

from tts_jax.models.io import load_model
from tts_jax.tasks.registry import get_task

DEFAULTS_DIR = os.path.join(os.path.dirname(__file__), "defaults")


@dataclasses.dataclass
class DefaultModels:
  """A task with its shipped models. `report`: report.json (pass@k, AUCs, sizes, times)."""

  task: object
  policy: object
  policy_params: dict
  orm: object
  orm_params: dict
  prm: object
  prm_params: dict
  report: dict

  @property
  def tokenizer(self):
    return self.task.tokenizer()


def available_defaults() -> list[str]:
  return sorted(d for d in os.listdir(DEFAULTS_DIR) if os.path.isdir(os.path.join(DEFAULTS_DIR, d))) \
      if os.path.isdir(DEFAULTS_DIR) else []


def load_default(task: str = "modchain", directory: str | None = None) -> DefaultModels:
  """Loads the shipped policy, ORM and PRM of `task` (or of a `directory` laid out the same way)."""
  root = directory or os.path.join(DEFAULTS_DIR, task)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"no default models for task {task!r} at {root}; available: "
                            f"{', '.join(available_defaults()) or 'none'}")
  models = {k: load_model(os.path.join(root, k)) for k in ("policy", "orm", "prm")}
  info = models["policy"][2]["info"]
  report_file = os.path.join(root, "report.json")
  report = json.load(open(report_file)) if os.path.isfile(report_file) else {}
  t = get_task(info.get("task", task), **info.get("task_knobs", {}))
  vocab = t.tokenizer().vocab_size
  for k, (m, _, _) in models.items():
    if m.config.vocab_size != vocab:
      raise ValueError(f"default {k} of {task} has vocab_size {m.config.vocab_size}, task tokenizer {vocab}")
  return DefaultModels(task=t, policy=models["policy"][0], policy_params=models["policy"][1],
                       orm=models["orm"][0], orm_params=models["orm"][1], prm=models["prm"][0],
                       prm_params=models["prm"][1], report=report)
