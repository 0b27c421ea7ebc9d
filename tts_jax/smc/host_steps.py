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
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.smc.engine import Loop, SMCModels, cache_schedule, not_finite


@functools.partial(jax.jit, static_argnames=("models", "cfg", "capacity"))
def _start(models, params, prompt_tokens, prompt_lengths, keys, reference, knobs, host_init, cfg, capacity):
  loop = Loop.of(models, params, cfg, keys, reference, knobs, host={"init": host_init})
  return loop.start(prompt_tokens, prompt_lengths, capacity)


@functools.partial(jax.jit, static_argnames=("models", "cfg", "capacity"), donate_argnames=("c",))
def _advance(models, params, keys, reference, knobs, c, cfg, capacity):
  """Token steps while the capacity holds them, until every particle waits (the step's end).
  -> (carry, bool[]: every particle waits)."""
  loop = Loop.of(models, params, cfg, keys, reference, knobs)
  fits = loop.fits(capacity)
  c = jax.lax.while_loop(lambda c: fits(c) & ~jnp.all(c[2].waiting), loop.token, c)
  return c, jnp.all(c[2].waiting)


@functools.partial(jax.jit, static_argnames=("models", "cfg"), donate_argnames=("c",))
def _finish(models, params, keys, reference, knobs, c, host_score, cfg):
  """The step's end: score, select, begin the next. -> (carry, bool[]: every particle done,
  `not_finite`'s flags)."""
  loop = Loop.of(models, params, cfg, keys, reference, knobs, host={"score": host_score})
  c = loop.finish(c)
  return c, jnp.all(c[0].done), not_finite(c[0])


@functools.partial(jax.jit, static_argnames=("models", "cfg", "capacity"))
def _grow(models, params, keys, reference, knobs, c, cfg, capacity):
  return Loop.of(models, params, cfg, keys, reference, knobs).grow(c, capacity)


def run_from_host(models: SMCModels, params, prompt_tokens, prompt_lengths, keys, reference, knobs, cfg):
  """`engine.run` (and `engine.not_finite`'s flags) with the potential's host work between programs.

  Arguments as `driver._run_jit` takes them (`cfg` the program's config, `knobs` its values);
  prompt_tokens and prompt_lengths as numpy arrays or jax arrays. Returns (particles, flags)."""
  pot = models.potential
  prompts = np.asarray(prompt_tokens), np.asarray(prompt_lengths)
  schedule = cache_schedule(models, cfg)
  host_init = pot.host_init(*prompts)
  c = _start(models, params, prompt_tokens, prompt_lengths, keys, reference, knobs, host_init, cfg=cfg,
             capacity=schedule[0])
  loop_args = (models, params, keys, reference, knobs)
  over = False
  for i, capacity in enumerate(schedule):
    if i:  # (grown when the run is over too, as `engine.run` does: the same final caches)
      c = _grow(*loop_args, c, cfg=cfg, capacity=capacity)
    while not over:
      c, waiting = _advance(*loop_args, c, cfg=cfg, capacity=capacity)
      if not bool(waiting):  # a particle needs a slot this capacity lacks: grow, same step
        break
      p, _, step = c  # every particle at a boundary (or done): the step ends
      tokens, lengths, done, start = jax.device_get((p.tokens, p.length, p.done, step.start))
      host_score = pot.host_score(*prompts, tokens, lengths, done, lengths > start, capacity)
      c, over, flags = _finish(*loop_args, c, host_score, cfg=cfg)
      over = bool(over)
  return c[0], flags  # of the last step's end: growing the caches after it moves no weight
