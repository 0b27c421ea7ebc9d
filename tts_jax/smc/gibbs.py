"""Particle Gibbs: iterated conditional SMC (Andrieu, Doucet & Holenstein 2010; over
reasoning steps with a PRM, Puri et al. 2025).

    chain = particle_gibbs(lm, params, prompts, lengths, key, cfg=cfg, potential=prm, sweeps=4)
    chain.tokens[-1], chain.lengths[-1]      # the last reference of every prompt: int32[B, T], int32[B]

A sweep is one conditional SMC run (`run_smc` with `reference_tokens`): particle 0 is held to
the current reference, the other N - 1 are proposed and resampled as usual; the next
reference is then drawn from the final particles in proportion to their final weights. The
target sigma(x) proportional to p(x) phi(x) is invariant under a sweep for any N >= 1, so the
references form a Markov chain converging to sigma (`tests/test_gibbs.py` checks invariance
and convergence against enumeration). The first sweep has no reference unless one is given:
it is plain SMC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from tts_jax.smc.driver import run_smc
from tts_jax.smc.engine import SMCConfig
from tts_jax.smc.particles import Particles
from tts_jax.sampling.inputs import prompt_keys


@struct.dataclass
class GibbsChain:
  """What `particle_gibbs` returns (K sweeps, B prompts, T = max_new_tokens).

  tokens: int32[K, B, T] the reference drawn after each sweep (pad after its end).
  lengths: int32[K, B] their lengths.
  particles: the last sweep's particles (caches dropped); `decoded` and `verified` count the
    policy's and the potential's tokens of all sweeps.
  """

  tokens: jax.Array
  lengths: jax.Array
  particles: Particles


def draw_reference(key: jax.Array, p: Particles) -> tuple[jax.Array, jax.Array]:
  """One particle per prompt drawn in proportion to its final weight: (tokens int32[B, T],
  lengths int32[B]). key: one key per prompt ([B])."""
  pick = jax.vmap(jax.random.categorical)(key, p.log_weights)  # [B]
  rows = jnp.arange(p.tokens.shape[0])
  return p.tokens[rows, pick], p.length[rows, pick]


def particle_gibbs(lm, params, prompt_tokens, prompt_lengths, key, *, cfg: SMCConfig, potential,
                   potential_params=None, sweeps: int, init_tokens=None, init_lengths=None, twist=None,
                   twist_params=None, mesh=None) -> GibbsChain:
  """Runs `sweeps` sweeps of particle Gibbs from B prompts.

  Args:
    lm, params, prompt_tokens int32[B, Tp], prompt_lengths int32[B], potential,
      potential_params, twist, twist_params, mesh: as in `run_smc`.
    key: one PRNG key, or one per prompt ([B]); sweep s of prompt b uses fold_in(key_b, s).
    cfg: the engine config of every sweep; its selection must allow conditional SMC
      (`Resample("multinomial")` with ess_threshold 0 or 1, `run_smc` checks).
    sweeps: K >= 1.
    init_tokens int32[B, T], init_lengths int32[B]: the first reference (default: none, the
      first sweep is plain SMC).

  Returns:
    `GibbsChain` with the K references and the last sweep's particles.
  """
  if not isinstance(sweeps, int) or sweeps < 1:
    raise ValueError(f"sweeps must be an int >= 1, got {sweeps!r}")
  if (init_tokens is None) != (init_lengths is None):
    raise ValueError("give both init_tokens and init_lengths, or neither")
  b = jnp.shape(prompt_tokens)[0]
  keys = prompt_keys(key, b)
  ref = None if init_tokens is None else (jnp.asarray(init_tokens, jnp.int32), jnp.asarray(init_lengths, jnp.int32))
  refs, decoded, verified, p = [], jnp.zeros((b,), jnp.int32), jnp.zeros((b,), jnp.int32), None
  for s in range(sweeps):
    run_keys, pick_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, s)), out_axes=1)(keys)
    p = run_smc(lm, params, prompt_tokens, prompt_lengths, run_keys, cfg=cfg, potential=potential,
                potential_params=potential_params, twist=twist, twist_params=twist_params,
                reference_tokens=None if ref is None else ref[0], reference_lengths=None if ref is None else ref[1],
                mesh=mesh)
    decoded, verified = decoded + p.decoded, verified + p.verified
    ref = draw_reference(pick_keys, p)
    refs.append(ref)
  particles = p.replace(cache=None, twist_cache=None, potential_state=None, decoded=decoded,
                         verified=verified)
  return GibbsChain(tokens=jnp.stack([r[0] for r in refs]), lengths=jnp.stack([r[1] for r in refs]),
                    particles=particles)
