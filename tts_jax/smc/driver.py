"""`run_smc`: the particle engine's checked entry point, and the programs it runs.

One jitted program of `engine.run` by default; with a mesh, one loop per device
(`per_device`, model=1) or the program split over the model axis; for a potential with host
work it names (`tts_jax.verifiers.base.needs_host`), the loop driven from the host
(`tts_jax.smc.host_steps`, on a mesh too). Afterwards it raises on NaN or +inf weights and on a paged cache
that ran out of pages.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.models import CausalLM
from tts_jax.models.paged import check_pages
from tts_jax.parallel import MODEL, per_device, place_params, shard_batch, unpad
from tts_jax.sampling.inputs import check_prompt_batch, check_token_ids, prompt_keys
from tts_jax.smc.host_steps import run_from_host
from tts_jax.smc.particles import Particles
from tts_jax.smc.engine import (FINITE_NAMES, SMCConfig, SMCModels, SMCParams, _check_potential_vocabulary,
                                not_finite, run)
from tts_jax.traced import knobs_of, program_of
from tts_jax.verifiers import as_potential
from tts_jax.verifiers.base import needs_host


@functools.partial(jax.jit, static_argnames=("models", "cfg"))
def _run_jit(models, params, prompt_tokens, prompt_lengths, keys, reference, knobs, cfg):
  """`run`, and its particles' `not_finite` flags (in the same program)."""
  p = run(models, params, prompt_tokens, prompt_lengths, keys, cfg, reference, knobs)
  return p, not_finite(p)


def run_smc(lm: CausalLM, params, prompt_tokens, prompt_lengths, key, *, cfg: SMCConfig, potential,
            potential_params=None, twist: CausalLM | None = None, twist_params=None, reference_tokens=None,
            reference_lengths=None, mesh=None) -> Particles:
  """Runs the engine from B prompts.

  Args:
    lm, params: the policy (`CausalLM` contract) and its params.
    prompt_tokens: int32[B, Tp] right-padded; prompt_lengths: int32[B].
    key: one PRNG key, or one per prompt ([B]).
    cfg: the `SMCConfig`.
    potential, potential_params: a `tts_jax.verifiers.Potential`, or a function
      (tokens int32[B, N, T], lengths int32[B, N], done bool[B, N]) -> log phi float32[B, N].
    twist, twist_params: an optional twist model (outputs log psi float32[..., V]).
    reference_tokens int32[B, T], reference_lengths int32[B]: an exact target sample per
      prompt to hold particle 0 to (conditional SMC; `Resample('multinomial')`, threshold 0 or 1).
    mesh: a `tts_jax.parallel` mesh: prompts (and so their particles, caches and
      resampling) split over its "data" axis, padded to a multiple of it with copies of the
      first. With model=1 each device runs the engine's loop on its own prompts
      (`per_device`; for a potential with host work, each device its own token loops between
      the host's step ends): its rows are bit for bit a one-device run on those prompts. With
      model > 1 the policy, potential and twist params are split over "model" (tensor
      parallel): the same run up to float rounding. With model=1 the returned particles
      carry no caches (`cache`, `twist_cache`, `potential_state` are None: they are
      per-device state that stays inside the run).

  Returns:
    The final `Particles` (weights are not resampled after the last step:
    `final_log_z()` is log Z_hat, `normalized_weights()` the final importance weights).

  Raises RuntimeError if a paged cache (cfg.page_size > 0) ran out of pages.
  """
  if not isinstance(cfg, SMCConfig):
    raise ValueError(f"cfg must be an SMCConfig, got {type(cfg).__name__}")
  prompt_tokens, prompt_lengths = check_prompt_batch(lm, prompt_tokens, prompt_lengths, cfg.max_new_tokens)
  check_token_ids(lm, delimiters=cfg.delimiters, stop_tokens=cfg.stop_tokens, pad_id=(cfg.pad_id,))
  _check_potential_vocabulary(lm, potential)
  prompt_tokens, prompt_lengths = jnp.asarray(prompt_tokens), jnp.asarray(prompt_lengths)
  b = prompt_tokens.shape[0]
  reference = None
  if reference_tokens is not None:
    cfg.select.check_reference()
    if reference_lengths is None or tuple(reference_tokens.shape) != (b, cfg.max_new_tokens):
      raise ValueError(f"reference_tokens must be int32[{b}, {cfg.max_new_tokens}] with reference_lengths "
                       f"int32[{b}], got {tuple(reference_tokens.shape)}")
    reference = (jnp.asarray(reference_tokens, jnp.int32), jnp.asarray(reference_lengths, jnp.int32))
  potential = as_potential(potential)
  # Configs and potentials differing only in traced fields share a program (`tts_jax.traced`).
  knobs = {"cfg": cfg.knobs(), "potential": knobs_of(potential)}
  cfg = cfg.program()
  models = SMCModels(policy=lm, potential=program_of(potential), twist=twist)
  params = SMCParams(policy=params, potential=potential_params, twist=twist_params)
  keys = prompt_keys(key, b)
  if mesh is not None:
    params = SMCParams(policy=place_params(mesh, params.policy), potential=place_params(mesh, params.potential),
                       twist=place_params(mesh, params.twist))
    prompt_tokens, prompt_lengths, keys = shard_batch(mesh, prompt_tokens, prompt_lengths, keys)
    reference = None if reference is None else shard_batch(mesh, *reference)
  args = (models, params, prompt_tokens, prompt_lengths, keys, reference, knobs)
  oom = None  # per device (data-only mesh): bool[B] "a paged cache ran out of pages"
  if needs_host(potential):  # the host work between programs, not called back
    p, oom, flags = run_from_host(*args, cfg, mesh=mesh)
  elif mesh is not None and mesh.shape[MODEL] == 1:
    p, oom, flags = _run_per_device(models, mesh, *args[1:], cfg)
  else:
    p, flags = _run_jit(*args, cfg)
  if oom is not None:
    if bool(jnp.any(oom)):
      raise RuntimeError("the paged KV cache ran out of pages on some device; the writes that found no page "
                         "were dropped. Increase num_pages.")
  else:
    check_pages(p.cache)
  _check_finite(flags)
  return p if mesh is None else unpad(p, b)


def _check_finite(flags: jax.Array) -> None:
  """Raises if a potential (or twist) produced NaN or +inf (`not_finite`'s flags): -inf is a
  zero weight, the others have no meaning as weights."""
  if isinstance(flags, jax.core.Tracer):
    return  # under a caller's trace (e.g. twist training): nothing concrete to check
  bad = [name for name, flag in zip(FINITE_NAMES, np.asarray(jax.device_get(flags))) if flag]
  if bad:
    raise ValueError(f"the run produced NaN or +inf in {', '.join(bad)}: a potential (or twist) returned NaN or +inf "
                     f"for some particle. Return -inf for a zero weight; NaN and +inf are not weights.")


@functools.partial(jax.jit, static_argnames=("models", "mesh", "cfg"))
def _run_per_device(models, mesh, params, prompt_tokens, prompt_lengths, keys, reference, knobs, cfg):
  """`run` on every device's prompts (split over "data"), each device its own loop.
  Returns the particles without their caches (device-local state, e.g. a decode slot
  counter per device), bool[B] "a paged cache ran out of pages" and `not_finite`'s flags."""
  def local(tokens, lengths, k, *ref):
    p = run(models, params, tokens, lengths, k, cfg, tuple(ref) if ref else None, knobs)
    oom = getattr(p.cache, "oom", jnp.zeros(tokens.shape[:1], bool))
    return p.replace(cache=None, twist_cache=None, potential_state=None), oom
  p, oom = per_device(mesh, local, prompt_tokens, prompt_lengths, keys, *(reference or ()))
  return p, oom, not_finite(p)
