"""Trains a task's default policy, ORM, PRM and twist from their experiment files and installs them.

    tts-jax train-defaults modchain [--dest DIR]

runs experiments/train/<task>_{policy,orm,prm,twist}.py in order (each resumes if
interrupted; the twist only if its file exists), copies the exported models into
tts_jax/tasks/defaults/<task> (or DIR), and records the training times in its report.json. Then
`python -m tts_jax.eval.model_report <task> --write` measures and records their quality.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from tts_jax.config_files import load_config
from tts_jax.tasks.shipped import DEFAULTS_DIR
from tts_jax.train.policy import train_policy
from tts_jax.train.twist import train_twist
from tts_jax.train.verifier import train_verifier

TRAINERS = {"policy": train_policy, "orm": train_verifier, "prm": train_verifier, "twist": train_twist}


def train_defaults(task: str, experiments_dir: str = "experiments/train", dest: str | None = None) -> dict:
  dest = dest or os.path.join(DEFAULTS_DIR, task)
  times = {}
  for kind, train in TRAINERS.items():
    path = os.path.join(experiments_dir, f"{task}_{kind}.py")
    if kind == "twist" and not os.path.isfile(path):
      continue  # a twist is optional
    cfg = load_config(path)
    t0 = time.perf_counter()
    train(cfg)
    times[kind] = round(time.perf_counter() - t0, 1)
    os.makedirs(dest, exist_ok=True)
    shutil.copytree(os.path.join(cfg.out_dir, "model"), os.path.join(dest, kind), dirs_exist_ok=True)
  report_file = os.path.join(dest, "report.json")
  report = json.load(open(report_file)) if os.path.isfile(report_file) else {}
  report["training_seconds"] = {**times, "total": round(sum(times.values()), 1)}
  with open(report_file, "w") as fh:
    json.dump(report, fh, indent=1)
  return report
