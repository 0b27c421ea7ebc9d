"""Summaries of an experiment's results: per method and budget, accuracy with a bootstrap CI,
samples, tokens and FLOPs; a text table; a plot of accuracy against FLOPs."""

from __future__ import annotations

import json

import numpy as np

from tts_jax.eval.experiment import Experiment
from tts_jax.eval.metrics import bootstrap_ci


def summarize(exp: Experiment, results_path: str) -> dict:
  """Per method and budget: accuracy (mean, 95% bootstrap CI over problems, Monte Carlo SE),
  mean samples used, tokens and FLOPs per problem."""
  with open(results_path) as fh:
    records = [json.loads(l) for l in fh]
  rows = {}
  for method in exp.methods:
    for k in exp.budgets:
      rs = [r["methods"][method.name] for r in records if r["budget"] == k]
      acc = np.array([r["accuracy"] for r in rs])
      mean, lo, hi = bootstrap_ci(acc, seed=exp.seed)
      rows.setdefault(method.name, []).append({
          "budget": k, "problems": len(rs), "accuracy": mean, "ci_low": lo, "ci_high": hi,
          "mc_se": float(np.sqrt(np.sum([r["mc_var"] for r in rs])) / max(len(rs), 1)),
          **{c: float(np.mean([r[c] for r in rs])) for c in ("samples", "generated_tokens", "verifier_tokens",
                                                            "flops", "kv_bytes", "prompt_tokens")}})
  return {"experiment": exp.name, "task": exp.task.name, "split": exp.split, "methods": rows}


def format_table(summary: dict) -> str:
  lines = [f"{'method':28s} {'N':>4s} {'accuracy % (95% CI)':>22s} {'samples':>8s} {'gen tok':>8s} "
           f"{'verif tok':>9s} {'GFLOPs':>8s}"]
  for name, rows in summary["methods"].items():
    for r in rows:
      ci = f"{100 * r['accuracy']:5.1f} ({100 * r['ci_low']:4.1f}-{100 * r['ci_high']:4.1f})"
      lines.append(f"{name:28s} {r['budget']:4d} {ci:>22s} {r['samples']:8.1f} {r['generated_tokens']:8.0f} "
                   f"{r['verifier_tokens']:9.0f} {r['flops'] / 1e9:8.3f}")
  return "\n".join(lines)


def plot(exp: Experiment, summary: dict, path: str) -> None:
  """Accuracy against FLOPs per problem (log x), one line per method, 95% CI bars."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  for name, rows in summary["methods"].items():
    x = [r["flops"] for r in rows]
    y = [100 * r["accuracy"] for r in rows]
    err = [[100 * (r["accuracy"] - r["ci_low"]) for r in rows], [100 * (r["ci_high"] - r["accuracy"]) for r in rows]]
    ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, label=name)
  ax.set_xscale("log")
  ax.set_xlabel("FLOPs per problem (policy + verifier)")
  ax.set_ylabel("accuracy (%)")
  ax.set_title(f"{exp.name}: {exp.task.name} {exp.split}, {exp.num_problems} problems, N = "
               f"{exp.budgets[0]}..{exp.budgets[-1]}", fontsize=9)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
