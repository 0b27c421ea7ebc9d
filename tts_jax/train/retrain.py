"""Trains a task's default policy, ORM and PRM from their experiment files and installs them.

    tts-jax train-defaults modchain [--dest DIR]

runs experiments/train/<task>_{policy,orm,prm}.py in order (each resumes if
interrupted), copies the three exported models into tts_jax/tasks/defaults/<task>
(or DIR), and records the training times in its report.json. Then
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
from tts_jax.train.verifier import train_verifier


def train_defaults(task: str, experiments_dir: str = "experiments/train", dest: str | None = None) -> dict:
  dest = dest or os.path.join(DEFAULTS_DIR, task)
  times = {}
  for kind in ("policy", "orm", "prm"):
    cfg = load_config(os.path.join(experiments_dir, f"{task}_{kind}.py"))
    t0 = time.perf_counter()
    (train_policy if kind == "policy" else train_verifier)(cfg)
    times[kind] = round(time.perf_counter() - t0, 1)
    os.makedirs(dest, exist_ok=True)
    shutil.copytree(os.path.join(cfg.out_dir, "model"), os.path.join(dest, kind), dirs_exist_ok=True)
  report_file = os.path.join(dest, "report.json")
  report = json.load(open(report_file)) if os.path.isfile(report_file) else {}
  report["training_seconds"] = {**times, "total": round(sum(times.values()), 1)}
  with open(report_file, "w") as fh:
    json.dump(report, fh, indent=1)
  return report
