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
under "timing" (the invocation that wrote the summary). While a batch's methods run, the
next batch's pool is sampled and scored on a worker thread (single-process runs), and while
the first pool is drawn another thread compiles the pool methods' programs on a stand-in
pool of the run's shapes (`tts_jax.eval.warmup`); every computation is pure in its inputs,
so the results do not depend on this overlap.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from tts_jax.config_files import to_dict
from tts_jax.eval.batch import Batch
from tts_jax.eval.compile_cache import enable_compilation_cache
from tts_jax.eval.experiment import Experiment
from tts_jax.eval.group import BatchGroup
from tts_jax.eval.pool_methods import PoolMethod
from tts_jax.eval.results_file import ResultsFile, atomic_write
from tts_jax.eval.summary import format_table, plot, plot_against, summarize
from tts_jax.eval.timing import Timer
from tts_jax.eval.warmup import WARM_UP, compile_pool_methods, compiles_on_stand_in
from tts_jax.models import pad_prompts
from tts_jax.models.memory import plan_memory
from tts_jax.parallel import data_size, describe, place_params
from tts_jax.tasks import load_models, task_prompts, task_tokens

POOLS_AHEAD = 1  # groups whose pools are drawn ahead of the one being selected (memory: their pools)
_NEXT_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts_jax-pool")
RESULTS, SUMMARY, CONFIG, PLOT = "results.jsonl", "summary.json", "config.json", "scaling.png"


class ResultsMismatch(ValueError):
  """The output directory holds results of a different experiment config."""


def _load_models(exp: Experiment):
  return load_models(exp.models, exp.task)


def _pool_verifiers(exp: Experiment) -> tuple[str, ...] | None:
  """The verifiers the experiment's pool methods read, or None if no method reads the pool."""
  pool = [m for m in exp.methods if isinstance(m, PoolMethod)]
  return tuple(dict.fromkeys(v for m in pool for v in m.verifiers())) if pool else None


def _drawn_ahead(make, groups: list, verifiers: tuple[str, ...] | None):
  """Yields (BatchGroup, its batch ids) for each id list in `groups` (`make` builds a group),
  each with its pool drawn: the first on the calling thread, each later one on a worker
  thread while the caller runs the groups before it, at most POOLS_AHEAD ahead (one thread
  compiles or selects while the other samples). verifiers None: no pool is drawn here
  (no method reads one, or a multi-process run, whose processes must launch their
  collectives in one order). Closing the generator waits for the worker."""
  upcoming: collections.deque = collections.deque()  # (group, future), in order
  try:
    for gi, ids in enumerate(groups):
      if upcoming:
        group, drawing = upcoming.popleft()
        drawing.result()  # re-raises the worker's error here
      else:
        group = make(ids)
        if verifiers is not None:
          group.draw_pool(verifiers)
      while verifiers is not None and gi + len(upcoming) + 1 < len(groups) and len(upcoming) < POOLS_AHEAD:
        following = make(groups[gi + len(upcoming) + 1])
        upcoming.append((following, _NEXT_POOL.submit(following.draw_pool, verifiers)))
      yield group, ids
  finally:
    concurrent.futures.wait([f for _, f in upcoming])


def _batch_records(batch: Batch) -> list[dict]:
  """One record per (problem, budget): every method's outcome."""
  exp, timer = batch.experiment, batch.timer
  by_method = {}
  for i, m in enumerate(exp.methods):
    with timer.phase(m.timing_phase):
      by_method[m.name] = m.evaluate(batch, i)
  return [{"problem": batch.start + i, "budget": k, "methods": {name: o[k][i].record() for name, o in by_method.items()}}
          for i in range(len(batch.problems)) for k in exp.budgets]


def run_experiment(exp: Experiment, *, mesh=None, stop_after_batches: int | None = None, quiet: bool = False) -> dict:
  """Runs (or resumes) `exp`; returns the summary (also written to summary.json + scaling.png).

  mesh: a `tts_jax.parallel` mesh: D = its data axis batches at a time, each device
    sampling, scoring and searching one batch (`tts_jax.eval.group`); the results are byte
    for byte those of a one-device run. On a multi-process run (`jax.distributed`) every
    process runs this with the same arguments; process 0 alone writes the output directory.
  stop_after_batches: stop after computing this many new batches (simulates a crash in tests).
  """
  enable_compilation_cache()
  with Timer() as timer:
    return _run(exp, timer, mesh, stop_after_batches, quiet)


def memory_plan(exp: Experiment, models, prompt_width: int, mesh=None):
  """The device memory one batch needs (`tts_jax.models.memory`): the policy and the verifiers
  the methods use, batch_problems prompts x max(budgets) samples on each data device."""
  names = sorted({v for m in exp.methods for v in m.verifiers()})
  # A step-tag PRM re-reads the particles' texts in the engines (no suffix KV of its own).
  rereads = [v for v in names if v == "prm" and getattr(models, "prm_format", None) is not None]
  beside = [getattr(models, v).config for v in names if v not in rereads]
  if any(m.twist_of(models)[0] is not None for m in exp.methods if hasattr(m, "twist_of")):
    beside.append(models.twist.config)  # a twist decodes beside the policy, with its own KV cache
  return plan_memory(models.policy.config, beside, prompts=exp.batch_problems,
                     num_particles=max(exp.budgets), prompt_len=prompt_width, max_new_tokens=exp.max_new_tokens,
                     model_devices=1 if mesh is None else mesh.shape["model"],
                     rereading=[getattr(models, v).config for v in rereads])


def _check_config(exp: Experiment, cfg_path: str) -> None:
  """The output directory holds this experiment's results or none: a different config, an
  unreadable config.json, or results without a config.json are refused (never mixed)."""
  out = exp.output_dir
  results = os.path.join(out, RESULTS)
  if not os.path.isfile(cfg_path):
    if os.path.isfile(results) and os.path.getsize(results) > 0:
      raise ResultsMismatch(f"{results} exists but {cfg_path} does not, so the results cannot be matched to this "
                            f"config; choose another out_dir (--set out_dir=...) or remove {out}")
    return
  try:
    with open(cfg_path) as fh:
      old = json.load(fh)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ResultsMismatch(f"{cfg_path} is not valid JSON ({e}); remove {out} or choose another out_dir") from None
  if old != json.loads(json.dumps(to_dict(exp))):
    raise ResultsMismatch(f"{out} holds results of a different experiment config; choose another "
                          f"out_dir (--set out_dir=...) or remove {out}")


def _run(exp: Experiment, timer: Timer, mesh, stop_after_batches: int | None, quiet: bool) -> dict:
  out = exp.output_dir
  writer = jax.process_index() == 0  # one writer on a multi-process run
  quiet = quiet or not writer
  cfg_path = os.path.join(out, CONFIG)
  split = exp.task.split(exp.split)
  if exp.num_problems > len(split):
    raise ValueError(f"num_problems={exp.num_problems} but split {exp.split!r} has {len(split)} problems")
  problems = list(split[:exp.num_problems])
  with timer.phase("loading"):
    models = _load_models(exp)
    if mesh is not None:  # placed once: every later call finds its params where they belong
      models = dataclasses.replace(models, **{f"{k}_params": place_params(mesh, getattr(models, f"{k}_params"))
                                             for k in ("policy", "orm", "prm")})
  pad = task_tokens(exp.task).pad
  prompt_width = pad_prompts(task_prompts(exp.task, problems), pad_id=pad)[0].shape[1]
  memory_plan(exp, models, prompt_width, mesh).check()  # refuse before touching the disk
  results = ResultsFile(os.path.join(out, RESULTS), len(problems), exp.batch_problems, exp.budgets)
  refused, done = None, [False] * results.num_batches
  if writer:
    try:
      _check_config(exp, cfg_path)
      os.makedirs(out, exist_ok=True)
      if not os.path.isfile(cfg_path):
        atomic_write(cfg_path, json.dumps(to_dict(exp), indent=1))
      done = results.load()
    except Exception as e:  # noqa: BLE001  (raised below, once every process knows)
      refused = e
  if jax.process_count() > 1:  # every process resumes from the writer's file, or stops with it
    got = multihost_utils.broadcast_one_to_all(np.asarray([refused is not None, *done], np.int32))
    if got[0] and refused is None:
      raise ResultsMismatch(f"process 0 refused the output directory {out} (its own error says why); "
                            f"process {jax.process_index()} stops with it")
    done = [bool(x) for x in got[1:]]
  if refused is not None:
    raise refused
  todo = [b for b in range(results.num_batches) if not done[b]]
  chunk = lambda b: problems[b * exp.batch_problems:(b + 1) * exp.batch_problems]  # noqa: E731
  bar = tqdm(total=len(problems), initial=sum(len(chunk(b)) for b in range(results.num_batches) if done[b]),
             desc=exp.name, unit="problem", disable=quiet, dynamic_ncols=True)
  new, per_batch, d = 0, [], data_size(mesh)
  groups = [todo[g:g + d] for g in range(0, len(todo), d)]
  make = lambda ids: BatchGroup(exp, models, [chunk(b) for b in ids], ids, prompt_width=prompt_width,  # noqa: E731
                                mesh=mesh, timer=timer)
  verifiers = _pool_verifiers(exp) if jax.process_count() == 1 else None
  last = len(groups) if stop_after_batches is None else min(len(groups), -(-stop_after_batches // d))
  warm = None  # the pool methods' programs, compiled while the first pool is drawn
  if todo and _pool_verifiers(exp) is not None and any(compiles_on_stand_in(m) for m in exp.methods):
    warm = WARM_UP.submit(compile_pool_methods, exp, models, chunk(todo[0]), todo[0] * exp.batch_problems,
                          prompt_width, timer)
  drawn = _drawn_ahead(make, groups[:last], verifiers)
  try:
    for group, ids in drawn:
      for slot, b in enumerate(ids):
        if stop_after_batches is not None and new >= stop_after_batches:
          break  # only in the last group drawn: the run stops below
        if warm is not None:  # done before the first batch's methods: nothing compiles twice
          warm.result()
          warm = None
        before = timer.compilations
        batch = Batch(experiment=exp, models=models, problems=chunk(b), start=b * exp.batch_problems,
                      prompt_width=prompt_width, timer=timer, group=group, slot=slot)
        records = _batch_records(batch)
        per_batch.append(timer.compilations - before)
        if writer:
          with timer.phase("host I/O"):
            results.append(records)
        bar.update(len(batch.problems))
        new += 1
  finally:
    drawn.close()  # stopped early: waits for the worker
    if warm is not None:
      warm.result()
  bar.close()
  if new < len(todo) or not writer:  # stopped by stop_after_batches, or not the writing process
    return {}
  results_path = results.path
  with timer.phase("host I/O"):
    results.finish()
    summary = summarize(exp, results_path)
    plot(exp, summary, os.path.join(out, PLOT))
    if exp.plot_against:
      plot_against(exp, summary, exp.plot_against, os.path.join(out, f"against_{exp.plot_against}.png"))
  summary["timing"] = {"batches_computed": new, "mesh": describe(mesh), **timer.report(),
                       "compilations_per_batch": per_batch}
  atomic_write(os.path.join(out, SUMMARY), json.dumps(summary, indent=1))
  if not quiet:
    print(format_table(summary))
    print(timer.format())
    print(f"results: {results_path}\nplot: {os.path.join(out, PLOT)}")
    if exp.plot_against:
      print(f"plot: {os.path.join(out, f'against_{exp.plot_against}.png')}")
  return summary
