"""Summaries of an experiment's results: per method and budget, accuracy with a bootstrap CI,
samples, tokens and FLOPs; a text table; a plot of accuracy against N and FLOPs, and one
against a method field (`plot_against`, e.g. verifier quality)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from tts_jax.eval.experiment import Experiment
from tts_jax.eval.metrics import bootstrap_ci


_ROW_FIELDS = {"accuracy", "samples", "mc_var", "generated_tokens", "verifier_tokens", "flops", "kv_bytes",
               "prompt_tokens"}


def summarize(exp: Experiment, results_path: str) -> dict:
  """Per method and budget: accuracy (mean, 95% bootstrap CI over problems, Monte Carlo SE),
  mean samples used, tokens and FLOPs per problem, and the mean of each further number the
  method's rows hold (its Outcome extras, e.g. a search's "resamples", SMC's "log_z")."""
  with open(results_path) as fh:
    records = [json.loads(l) for l in fh]
  rows = {}
  for method in exp.methods:
    for k in exp.budgets:
      rs = [r["methods"][method.name] for r in records if r["budget"] == k]
      acc = np.array([r["accuracy"] for r in rs])
      extras = sorted(set.intersection(*(set(r) for r in rs)) - _ROW_FIELDS) if rs else []
      mean, lo, hi = bootstrap_ci(acc, seed=exp.seed)
      rows.setdefault(method.name, []).append({
          "budget": k, "problems": len(rs), "accuracy": mean, "ci_low": lo, "ci_high": hi,
          "mc_se": float(np.sqrt(np.sum([r["mc_var"] for r in rs])) / max(len(rs), 1)),
          **{c: float(np.mean([r[c] for r in rs])) for c in ("samples", "generated_tokens", "verifier_tokens",
                                                            "flops", "kv_bytes", "prompt_tokens")},
          **{c: float(np.mean([r[c] for r in rs])) for c in extras}})
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


def method_families(methods, field: str) -> tuple[dict[str, list], list]:
  """Methods that differ only in `field` (and their names), as {label: [(value, method)]} sorted
  by value, and the methods without the field. A family's label is its names' common
  prefix up to its last " (" (e.g. "particle filtering (AUC 0.6)", "... (AUC 0.9)" give
  "particle filtering")."""
  groups: dict[tuple, list] = {}
  references = []
  for m in methods:
    if not hasattr(m, field):
      references.append(m)
      continue
    key = (type(m).__name__,) + tuple((f.name, getattr(m, f.name)) for f in dataclasses.fields(m)
                                     if f.name not in ("name", field))
    groups.setdefault(key, []).append((getattr(m, field), m))
  families = {}
  for members in groups.values():
    names = [m.name for _, m in members]
    prefix = os.path.commonprefix(names) if len(names) > 1 else names[0]
    label = (prefix[:prefix.rfind(" (")] if " (" in prefix else prefix).strip() or type(members[0][1]).__name__
    families[label] = sorted(members, key=lambda vm: vm[0])
  return families, references


def plot_against(exp: Experiment, summary: dict, field: str, path: str) -> None:
  """Accuracy at the largest budget (95% CI bars) against the methods' `field`: one line per
  family (`method_families`), the other methods as horizontal lines."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  budget = max(exp.budgets)
  at = lambda m: next(r for r in summary["methods"][m.name] if r["budget"] == budget)  # noqa: E731
  families, references = method_families(exp.methods, field)
  colors = plt.get_cmap("tab10").colors
  fig, ax = plt.subplots(figsize=(7, 4.8), dpi=120)
  for i, (label, members) in enumerate(families.items()):
    rows = [at(m) for _, m in members]
    y = np.array([100 * r["accuracy"] for r in rows])
    err = [[100 * (r["accuracy"] - r["ci_low"]) for r in rows], [100 * (r["ci_high"] - r["accuracy"]) for r in rows]]
    ax.errorbar([v for v, _ in members], y, yerr=err, marker=MARKERS[i % len(MARKERS)], ms=4, capsize=2, lw=1.2,
                elinewidth=0.7, label=label, color=colors[i % len(colors)])
  for j, m in enumerate(references):
    ax.axhline(100 * at(m)["accuracy"], color="0.4", lw=1, linestyle=LINESTYLES[j % len(LINESTYLES)], label=m.name)
  ax.set_xlabel(field.replace("_", " "))
  ax.set_ylabel(f"accuracy at N = {budget} (%)")
  ax.grid(True, alpha=0.3)
  ax.set_title(f"{exp.name}: {exp.task.name} {exp.split}, {exp.num_problems} problems, 95% bootstrap CIs",
               fontsize=10)
  ax.legend(fontsize=8, frameon=False)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
