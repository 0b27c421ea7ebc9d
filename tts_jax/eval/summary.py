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


MARKERS = "osD^vP*Xh<>p"
LINESTYLES = ("-", "--", "-.", ":")


def plot(exp: Experiment, summary: dict, path: str) -> None:
  """Two panels, one line per method with 95% CI bars: accuracy against the budget N (left;
  methods dodged sideways so that lines which coincide stay visible) and against FLOPs per
  problem (right; every point labelled with its N). Distinct marker and dash per method,
  the legend below the panels."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker
  methods = list(summary["methods"].items())
  colors = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20").colors  # no colour used twice
  fig, (by_n, by_flops) = plt.subplots(1, 2, figsize=(11, 4.8), dpi=120, sharey=True)
  spread = 0.4  # total sideways dodge in log2(N) units, shared by all methods
  for i, (name, rows) in enumerate(methods):
    style = dict(marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[(i // len(MARKERS) + i) % len(LINESTYLES)],
                 ms=4, capsize=2, lw=1.2, elinewidth=0.7, label=name, color=colors[i % len(colors)])
    n = np.array([r["budget"] for r in rows], float)
    y = np.array([100 * r["accuracy"] for r in rows])
    err = [[100 * (r["accuracy"] - r["ci_low"]) for r in rows], [100 * (r["ci_high"] - r["accuracy"]) for r in rows]]
    dodge = 2.0 ** (spread * (i / max(len(methods) - 1, 1) - 0.5))
    line = by_n.errorbar(n * dodge, y, yerr=err, **style)
    flops = [r["flops"] / 1e9 for r in rows]
    by_flops.errorbar(flops, y, yerr=err, **{**style, "label": None})
    for x, yy, k in zip(flops, y, n):
      by_flops.annotate(f"{int(k)}", (x, yy), textcoords="offset points", xytext=(3, 3), fontsize=6,
                        color=line[0].get_color())
  budgets = sorted({r["budget"] for _, rows in methods for r in rows})
  by_n.set_xscale("log", base=2)
  by_n.set_xticks(budgets, [str(k) for k in budgets])
  by_n.minorticks_off()
  by_n.set_xlabel("N (samples or particles per problem; methods dodged sideways)")
  by_n.set_ylabel("accuracy (%)")
  by_flops.set_xscale("log")
  by_flops.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))  # 1-2-5 ticks, plain numbers
  by_flops.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  by_flops.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  by_flops.set_xlabel("GFLOPs per problem (policy + verifier); labels: N")
  for ax in (by_n, by_flops):
    ax.grid(True, which="major", alpha=0.3)
  fig.suptitle(f"{exp.name}: {exp.task.name} {exp.split}, {exp.num_problems} problems, 95% bootstrap CIs",
               fontsize=10)
  fig.legend(*by_n.get_legend_handles_labels(), loc="lower center", ncol=min(3, len(methods)), fontsize=8,
             frameon=False)
  rows_of_legend = -(-len(methods) // 3)
  fig.tight_layout(rect=(0, 0.045 * rows_of_legend + 0.02, 1, 1))
  fig.savefig(path)
  plt.close(fig)
