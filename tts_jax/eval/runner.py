"""The resumable experiment runner: it runs, resumes and writes; nothing else.

Problems are processed in fixed batches of `batch_problems`. For each batch the
runner evaluates every method (`tts_jax.eval.method.Method`) at every budget on a
`Batch` (which draws and scores the shared pool only if a method asks), and appends
one JSON line per (problem, budget) to results.jsonl in a single write. On restart
it keeps the whole batches already written (dropping a torn tail left by a kill),
skips them, and continues: the final file is identical to an uninterrupted run's.
The summary, table and plot (`tts_jax.eval.summary`) are made from the file.

All batches share one padded prompt width (from all the run's prompts), so sampling,
scoring and search compile once per run; compiled code is kept in JAX's persistent
compilation cache (`tts_jax.eval.compile_cache`), so a second run compiles nothing. The
runner prints where the time went (`tts_jax.eval.timing`) and stores it in summary.json
under "timing" (the invocation that wrote the summary).
"""

from __future__ import annotations

import json
import os

from tqdm.auto import tqdm

from tts_jax.config_files import to_dict
from tts_jax.eval.batch import Batch
from tts_jax.eval.compile_cache import enable_compilation_cache
from tts_jax.eval.experiment import Experiment
from tts_jax.eval.summary import format_table, plot, summarize
from tts_jax.eval.timing import Timer
from tts_jax.models import pad_prompts
from tts_jax.tasks import PAD, load_default, task_prompts

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


def _batch_records(exp: Experiment, models, batch_index: int, problems, prompt_width: int, timer: Timer) -> list[dict]:
  """One record per (problem, budget): every method's outcome."""
  batch = Batch(experiment=exp, models=models, problems=problems, start=batch_index * exp.batch_problems,
                prompt_width=prompt_width, timer=timer)
  by_method = {}
  for i, m in enumerate(exp.methods):
    with timer.phase(m.timing_phase):
      by_method[m.name] = m.evaluate(batch, i)
  return [{"problem": batch.start + i, "budget": k, "methods": {name: o[k][i].record() for name, o in by_method.items()}}
          for i in range(len(problems)) for k in exp.budgets]


def run_experiment(exp: Experiment, *, stop_after_batches: int | None = None, quiet: bool = False) -> dict:
  """Runs (or resumes) `exp`; returns the summary (also written to summary.json + scaling.png).

  stop_after_batches: stop after computing this many new batches (simulates a crash in tests).
  """
  enable_compilation_cache()
  with Timer() as timer:
    return _run(exp, timer, stop_after_batches, quiet)


def _run(exp: Experiment, timer: Timer, stop_after_batches: int | None, quiet: bool) -> dict:
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
  with timer.phase("loading"):
    models = _load_models(exp)
  pad = exp.task.tokenizer().token_to_id(PAD)
  prompt_width = pad_prompts(task_prompts(exp.task, problems), pad_id=pad)[0].shape[1]
  results_path = os.path.join(out, RESULTS)
  num_batches = -(-len(problems) // exp.batch_problems)
  lines_per_batch = exp.batch_problems * len(exp.budgets)
  done = _completed_batches(results_path, lines_per_batch)
  bar = tqdm(total=len(problems), initial=min(done * exp.batch_problems, len(problems)), desc=exp.name,
             unit="problem", disable=quiet, dynamic_ncols=True)
  new, per_batch = 0, []
  for b in range(done, num_batches):
    if stop_after_batches is not None and new >= stop_after_batches:
      bar.close()
      return {}
    chunk = problems[b * exp.batch_problems:(b + 1) * exp.batch_problems]
    before = timer.compilations
    records = _batch_records(exp, models, b, chunk, prompt_width, timer)
    per_batch.append(timer.compilations - before)
    with timer.phase("host I/O"), open(results_path, "a") as fh:
      fh.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
      fh.flush()
      os.fsync(fh.fileno())
    bar.update(len(chunk))
    new += 1
  bar.close()
  with timer.phase("host I/O"):
    summary = summarize(exp, results_path)
    plot(exp, summary, os.path.join(out, PLOT))
  summary["timing"] = {"batches_computed": new, **timer.report(), "compilations_per_batch": per_batch}
  with open(os.path.join(out, SUMMARY), "w") as fh:
    json.dump(summary, fh, indent=1)
  if not quiet:
    print(format_table(summary))
    print(timer.format())
    print(f"results: {results_path}\nplot: {os.path.join(out, PLOT)}")
  return summary


