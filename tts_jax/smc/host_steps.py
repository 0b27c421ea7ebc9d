"""The engine's loop driven from the host, for potentials with host work.

A potential that only the host can evaluate (a step-tag PRM re-tokenizing the text, a
checker without array code) could call back to the host inside the engine's one program
(`jax.pure_callback`), but JAX's persistent compilation cache keeps no program holding a
callback, so every run would compile its engines again. When the potential names its host
work instead (`host_init` / `host_score`, `tts_jax.verifiers.base`), `run_smc` runs the same
loop as separate programs with the host work between them:

    start                       prefill, init (the potential reads host_init's arrays)
    for each cache capacity:    grow (after the first)
      repeat:  advance          token steps until every particle waits at a boundary
                                (or a particle needs a cache slot the capacity lacks)
               finish           score (reading host_score's arrays), select, next step

Each program is the corresponding part of `engine.run` (`engine.Loop`), so a run gives the
particles of the one-program run bit for bit
(`tests/test_math_smoke.py::test_host_steps_give_the_one_program_run`); none holds a
callback, so a second run loads them all from the cache. The host reads the particles'
tokens at each step end, as the callback did.

On a mesh with a data axis only, each program runs on every device's prompts (`per_device`,
no collectives: each device its own token loop) and the carry stays on its devices with a
leading device axis (a device's cache holds state of its own, e.g. a paged cache's write
slot). A step ends once every device's particles wait: a prompt's particles, draws and
selections do not depend on which other prompts share its steps, so the rows are the
one-device run's bit for bit. With a model axis the programs are partitioned by XLA, as
`run_smc`'s one-program path is.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.parallel import MODEL, device_rows, each_device, host_rows, to_host
from tts_jax.smc.engine import Loop, SMCModels, cache_schedule, not_finite


def _loop(models, params, cfg, keys, reference, knobs, host=None) -> Loop:
  return Loop.of(models, params, cfg, keys, tuple(reference) or None, knobs, host=host)


@functools.partial(jax.jit, static_argnames=("models", "cfg", "capacity", "mesh"))
def _start(models, params, prompt_tokens, prompt_lengths, keys, reference, knobs, host_init, cfg, capacity, mesh):
  def part(tokens, lengths, keys, reference, init):
    return _loop(models, params, cfg, keys, reference, knobs, {"init": init}).start(tokens, lengths, capacity)
  return each_device(mesh, part, (prompt_tokens, prompt_lengths, keys, reference, host_init))


@functools.partial(jax.jit, static_argnames=("models", "cfg", "capacity", "mesh"), donate_argnames=("c",))
def _advance(models, params, keys, reference, knobs, c, cfg, capacity, mesh):
  """Token steps while the capacity holds them, until every particle waits (the step's end).
  -> (carry, bool[] (bool[D] per device): every particle waits)."""
  def part(c, keys, reference):
    loop = _loop(models, params, cfg, keys, reference, knobs)
    fits = loop.fits(capacity)
    c = jax.lax.while_loop(lambda c: fits(c) & ~jnp.all(c[2].waiting), loop.token, c)
    return c, jnp.all(c[2].waiting)
  return each_device(mesh, part, (keys, reference), carry=c)


@functools.partial(jax.jit, static_argnames=("models", "cfg", "mesh"), donate_argnames=("c",))
def _finish(models, params, keys, reference, knobs, c, host_score, cfg, mesh):
  """The step's end: score, select, begin the next. -> (carry, bool[]: every particle done,
  `not_finite`'s flags bool[3]), each with a leading device axis per device."""
  def part(c, keys, reference, score):
    c = _loop(models, params, cfg, keys, reference, knobs, {"score": score}).finish(c)
    return c, jnp.all(c[0].done), not_finite(c[0])
  return each_device(mesh, part, (keys, reference, host_score), carry=c)


@functools.partial(jax.jit, static_argnames=("models", "cfg", "capacity", "mesh"))
def _grow(models, params, keys, reference, knobs, c, cfg, capacity, mesh):
  def part(c, keys, reference):
    return _loop(models, params, cfg, keys, reference, knobs).grow(c, capacity)
  return each_device(mesh, part, (keys, reference), carry=c)


@functools.partial(jax.jit, static_argnames=("mesh",))
def _rows_of(c, mesh):
  """The per-device carry's particles as rows [B, ...], without their device-local state
  (caches, potential state), and the paged cache's "ran out of pages" flags bool[B]."""
  def part(c):
    p = c[0]
    oom = getattr(p.cache, "oom", jnp.zeros(p.done.shape[:1], bool))
    return p.replace(cache=None, twist_cache=None, potential_state=None), oom
  return each_device(mesh, part, (), carry=c, rows_out=True)


def run_from_host(models: SMCModels, params, prompt_tokens, prompt_lengths, keys, reference, knobs, cfg, mesh=None):
  """`engine.run` (and `engine.not_finite`'s flags) with the potential's host work between programs.

  Arguments as `driver._run_jit` takes them (`cfg` the program's config, `knobs` its values);
  prompt_tokens and prompt_lengths as numpy arrays or jax arrays (with a mesh: placed by
  `shard_batch`, params by `place_params`). Returns (particles, oom, flags bool[3]): oom is
  None without a mesh or with a model axis (the particles keep their caches), else bool[B]
  "a paged cache ran out of pages" and the particles carry no caches (as `run_smc` says)."""
  pot = models.potential
  each = mesh is not None and mesh.shape[MODEL] == 1  # the carry per device, with a device axis
  prompts = to_host((prompt_tokens, prompt_lengths))  # (every process holds them all)
  mine = lambda d, x: x[device_rows(mesh, len(x), d)]  # noqa: E731  the rows `host_rows` gives fn(d, ...)

  def score(capacity, d, tokens, lengths, done, start):  # device d's (or all) particles at a step's end
    return pot.host_score(mine(d, prompts[0]), mine(d, prompts[1]), tokens, lengths, done, lengths > start,
                          capacity)

  schedule = cache_schedule(models, cfg)
  reference = tuple(reference or ())
  loop_args = (models, params, keys, reference, knobs)
  host_init = host_rows(mesh, lambda d: pot.host_init(mine(d, prompts[0]), mine(d, prompts[1])))
  c = _start(models, params, prompt_tokens, prompt_lengths, keys, reference, knobs, host_init, cfg=cfg,
             capacity=schedule[0], mesh=mesh)
  over = False
  for i, capacity in enumerate(schedule):
    if i:  # (grown when the run is over too, as `engine.run` does: the same final caches)
      c = _grow(*loop_args, c, cfg=cfg, capacity=capacity, mesh=mesh)
    while not over:
      c, waiting = _advance(*loop_args, c, cfg=cfg, capacity=capacity, mesh=mesh)
      if not np.all(to_host(waiting)):  # a particle needs a slot this capacity lacks: grow, same step
        break
      p, _, step = c  # every particle at a boundary (or done): the step ends
      host_score = host_rows(mesh, functools.partial(score, capacity), p.tokens, p.length, p.done, step.start)
      c, over, flags = _finish(*loop_args, c, host_score, cfg=cfg, mesh=mesh)
      over = bool(np.all(to_host(over)))
  flags = np.any(to_host(flags).reshape(-1, 3), axis=0)  # of the last step's end: later growth moves no weight
  if not each:
    return c[0], None, flags
  p, oom = _rows_of(c, mesh=mesh)
  return p, oom, flags
