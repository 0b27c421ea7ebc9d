"""A resumable training loop: jitted step, orbax checkpoints, progress bar, metrics log.

Resuming is exact: the batch of step s is a pure function of s (see
`batch_fn`), and the checkpoint holds params, optimizer state and step, so a
run killed at any point and restarted ends with the same params, bit for bit on
CPU, as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm


def _manager(directory: str) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _check_run_config(checkpoint_dir: str, config: dict | None, resuming: bool) -> None:
  if config is None:
    return
  path = os.path.join(checkpoint_dir, "run_config.json")
  config = json.loads(json.dumps(config))
  if resuming and os.path.isfile(path):
    with open(path) as fh:
      try:
        old = json.load(fh)
      except json.JSONDecodeError:
        old = None
    if old is not None and old != config:
      diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
      raise ValueError(f"{checkpoint_dir} holds checkpoints of another config (differs in: {', '.join(diff)}); "
                       f"resuming would continue under the new one. Use another out_dir or remove it.")
  tmp = f"{path}.tmp"
  with open(tmp, "w") as fh:
    json.dump(config, fh, indent=1)
  os.replace(tmp, path)


def _truncate_log(path: str, start: int) -> None:
  """Keeps the metrics records up to step `start` (atomically); torn lines dropped."""
  if not os.path.isfile(path):
    return
  keep = []
  with open(path) as fh:
    for line in fh:
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue
      if rec.get("step", 0) <= start:
        keep.append(json.dumps(rec) + "\n")
  tmp = f"{path}.tmp"
  with open(tmp, "w") as fh:
    fh.write("".join(keep))
  os.replace(tmp, path)


def run(*, params: dict, loss_fn: Callable, batch_fn: Callable[[int], dict], optimizer: optax.GradientTransformation,
        steps: int, checkpoint_dir: str, checkpoint_every: int, eval_fn: Callable[[dict, int], dict] | None = None,
        eval_every: int = 0, stop_after: int | None = None, desc: str = "train",
        config: dict | None = None) -> tuple[dict, list[dict]]:
  """Trains `params` for `steps` steps, resuming from `checkpoint_dir` when it holds a checkpoint.

  Args:
    params: initial params (used only when there is no checkpoint).
    loss_fn: (params, batch) -> (scalar loss, dict of scalar metrics); jitted here.
    batch_fn: step -> batch (a dict of arrays); must be a pure function of step.
    optimizer: an optax transformation.
    steps: total steps of the run.
    checkpoint_dir: where orbax checkpoints live (created if missing).
    checkpoint_every: save every this many steps (and at the end).
    eval_fn: (params, step) -> dict of metrics, run every `eval_every` steps and at the end.
    stop_after: stop (after checkpointing) once this step is reached; simulates a crash in tests.
    config: the run's config (JSON-ready): stored beside the checkpoints; resuming under a
      different one is refused, naming the fields that differ.

  Returns:
    (params, metrics log): the log also goes to `checkpoint_dir`/metrics.jsonl.
  """
  os.makedirs(checkpoint_dir, exist_ok=True)
  mngr = _manager(os.path.join(checkpoint_dir, "checkpoints"))
  state = {"params": params, "opt_state": optimizer.init(params)}
  start = 0
  latest = mngr.latest_step()
  _check_run_config(checkpoint_dir, config, resuming=latest is not None)
  if latest is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = mngr.restore(latest, args=ocp.args.StandardRestore(abstract))
    start = latest

  @jax.jit
  def step_fn(state, batch):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt_state": opt_state}, {"loss": loss, **metrics}

  log_path = os.path.join(checkpoint_dir, "metrics.jsonl")
  _truncate_log(log_path, start)  # records after the checkpoint we resume from are written again
  log: list[dict] = []
  bar = tqdm(total=steps, initial=start, desc=desc, dynamic_ncols=True, mininterval=1.0)
  t0 = time.perf_counter()
  step = start
  for step in range(start + 1, steps + 1):
    state, metrics = step_fn(state, batch_fn(step - 1))
    record = None
    if step == 1 or step % 50 == 0 or step == steps:
      record = {"step": step, **{k: float(v) for k, v in metrics.items()}, "time_s": time.perf_counter() - t0}
    if eval_fn is not None and eval_every and (step % eval_every == 0 or step == steps):
      record = {**(record or {"step": step}), **eval_fn(state["params"], step)}
    if record is not None:
      log.append(record)
      with open(log_path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
      bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k not in ("step", "time_s")})
    bar.update(1)
    if step % checkpoint_every == 0 or step == steps:
      mngr.save(step, args=ocp.args.StandardSave(state))
    if stop_after is not None and step >= stop_after:
      break
  bar.close()
  mngr.wait_until_finished()
  mngr.close()
  return state["params"], log
