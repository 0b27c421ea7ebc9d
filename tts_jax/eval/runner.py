"""The resumable experiment runner: pools -> per-problem JSONL -> table and plot.

Problems are processed in fixed batches of `batch_problems`. For each batch the
runner samples a pool of max(budgets) completions per problem (prompt i's samples
depend only on (seed, i)), grades and scores them, evaluates every method at
every budget, and appends one JSON line per (problem, budget) to results.jsonl in
a single write. On restart it keeps the whole batches already written (dropping a
torn tail left by a kill), skips them, and continues: the final file is identical
to an uninterrupted run's.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from tqdm.auto import tqdm

from tts_jax.configs import to_dict
from tts_jax.eval.compute import forward_flops, kv_bytes_per_token
from tts_jax.eval.experiment import Experiment
from tts_jax.eval.metrics import bootstrap_ci
from tts_jax.eval.pool import build_pool
from tts_jax.tasks.defaults import load_default
from tts_jax.tasks.rollout import complete, task_prompts

RESULTS, SUMMARY, CONFIG, PLOT = "results.jsonl", "summary.json", "config.json", "scaling.png"


class ResultsMismatch(ValueError):
  """The output directory holds results of a different experiment config."""


def _load_models(exp: Experiment):
  if exp.models == "default":
    return load_default(exp.task.name)
  return load_default(exp.task.name, directory=exp.models)


def _completed_batches(path: str, lines_per_batch: int) -> int:
  """Number of whole batches in results.jsonl; truncates anything after them."""
  if not os.path.isfile(path):
    return 0
  with open(path, "rb") as fh:
    data = fh.read()
  lines = data.split(b"\n")[:-1]  # a torn last line has no newline
  good = []
  for line in lines:
    try:
      json.loads(line)
    except json.JSONDecodeError:
      break
    good.append(line)
  batches = len(good) // lines_per_batch
  keep = b"".join(l + b"\n" for l in good[:batches * lines_per_batch])
  if keep != data:
    with open(path, "wb") as fh:
      fh.write(keep)
  return batches


def _costs(exp: Experiment, models, method, pool, used: np.ndarray) -> list[dict]:
  """Expected compute per problem for `used` samples (pool means of per-sample costs)."""
  pc = models.policy.config
  out = []
  for i in range(pool.shape[0]):
    plen, lens = int(pool.prompt_lens[i]), pool.lengths[i].astype(np.float64)
    per_sample = np.array([forward_flops(pc, l, context_start=plen) for l in lens]).mean()
    flops = forward_flops(pc, plen) + used[i] * per_sample
    vtok = 0.0
    for v in method.needs():
      vc = getattr(models, v).config
      flops += used[i] * np.mean([forward_flops(vc, plen + l, head_outputs=1) for l in lens])
      vtok += used[i] * (plen + lens.mean())
    gen = used[i] * lens.mean()
    out.append({"prompt_tokens": plen, "generated_tokens": gen, "verifier_tokens": vtok, "flops": flops,
                "kv_bytes": kv_bytes_per_token(pc) * (plen + gen)})
  return out


def _is_search(method) -> bool:
  return getattr(method, "kind", "pool") == "search"


def _batch_records(exp: Experiment, models, batch: int, problems) -> list[dict]:
  task = exp.task
  start = batch * exp.batch_problems
  prompts = task_prompts(task, problems)
  s = exp.sampling
  pool_methods = [(i, m) for i, m in enumerate(exp.methods) if not _is_search(m)]
  pool = None
  if pool_methods:
    comps = complete(task, models.policy, models.policy_params, prompts, num_samples=max(exp.budgets),
                     key=jax.random.key(exp.seed), max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                     top_k=s.top_k, top_p=s.top_p, min_p=s.min_p, batch_prompts=exp.batch_problems,
                     index_offset=start)
    needs = {v for _, m in pool_methods for v in m.needs()}
    pool = build_pool(task, problems, prompts, comps,
                      orm=(models.orm, models.orm_params) if "orm" in needs else None,
                      prm=(models.prm, models.prm_params) if "prm" in needs else None)
  mc_root = jax.random.key(exp.seed + 1)
  by_budget = {}
  for k in exp.budgets:
    results = {}
    for m_idx, method in enumerate(exp.methods):
      if _is_search(method):
        # Search runs draw from their own stream: fold_in(seed + 2, method), then the problem index.
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(exp.seed + 2), m_idx), k)
        padded = problems + [problems[0]] * (exp.batch_problems - len(problems))  # one shape per budget
        recs = method.run(models, task, padded, task_prompts(task, padded), k, key, s, index_offset=start)
        results[method.name] = recs[:len(problems)]
        continue
      keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(mc_root, i), k), m_idx))(
          np.arange(start, start + len(problems)))
      acc, used, mc_var = method.evaluate(pool, k, keys, exp.num_subsets)
      costs = _costs(exp, models, method, pool, used)
      results[method.name] = [{"accuracy": float(acc[i]), "samples": float(used[i]), "mc_var": float(mc_var[i]),
                               **{c: float(v) for c, v in costs[i].items()}} for i in range(len(problems))]
    by_budget[k] = results
  records = []
  for i in range(len(problems)):
    for k in exp.budgets:
      records.append({"problem": start + i, "budget": k,
                      "methods": {name: r[i] for name, r in by_budget[k].items()}})
  return records


def run_experiment(exp: Experiment, *, stop_after_batches: int | None = None, quiet: bool = False) -> dict:
  """Runs (or resumes) `exp`; returns the summary (also written to summary.json + scaling.png).

  stop_after_batches: stop after computing this many new batches (simulates a crash in tests).
  """
  out = exp.output_dir
  os.makedirs(out, exist_ok=True)
  cfg_path = os.path.join(out, CONFIG)
  cfg = to_dict(exp)
  if os.path.isfile(cfg_path):
    with open(cfg_path) as fh:
      old = json.load(fh)
    if old != json.loads(json.dumps(cfg)):
      raise ResultsMismatch(f"{out} holds results of a different experiment config; choose another out_dir "
                            f"(--set out_dir=...) or remove {out}")
  else:
    with open(cfg_path, "w") as fh:
      json.dump(cfg, fh, indent=1)
  split = exp.task.split(exp.split)
  if exp.num_problems > len(split):
    raise ValueError(f"num_problems={exp.num_problems} but split {exp.split!r} has {len(split)} problems")
  problems = list(split[:exp.num_problems])
  models = _load_models(exp)
  results_path = os.path.join(out, RESULTS)
  num_batches = -(-len(problems) // exp.batch_problems)
  lines_per_batch = exp.batch_problems * len(exp.budgets)
  done = _completed_batches(results_path, lines_per_batch)
  bar = tqdm(total=len(problems), initial=min(done * exp.batch_problems, len(problems)), desc=exp.name,
             unit="problem", disable=quiet, dynamic_ncols=True)
  new = 0
  for b in range(done, num_batches):
    if stop_after_batches is not None and new >= stop_after_batches:
      bar.close()
      return {}
    chunk = problems[b * exp.batch_problems:(b + 1) * exp.batch_problems]
    records = _batch_records(exp, models, b, chunk)
    with open(results_path, "a") as fh:
      fh.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
      fh.flush()
      os.fsync(fh.fileno())
    bar.update(len(chunk))
    new += 1
  bar.close()
  summary = summarize(exp, results_path)
  with open(os.path.join(out, SUMMARY), "w") as fh:
    json.dump(summary, fh, indent=1)
  plot(exp, summary, os.path.join(out, PLOT))
  if not quiet:
    print(format_table(summary))
    print(f"results: {results_path}\nplot: {os.path.join(out, PLOT)}")
  return summary


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
