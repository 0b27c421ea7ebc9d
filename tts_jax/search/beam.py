"""Search methods as configurations of the particle engine (`tts_jax.smc.run_smc`).

All four spend the same budget of N particles per prompt and differ only in `select`:

  best_of_n        N independent samples, scored (select="none");
  beam_search      keep the top N / M distinct particles by potential after every step,
                   each continued by M expansions (one group of N; Snell et al. 2024);
  dvts             N / M independent subtrees of M particles, each keeping its best one
                   and expanding it M times (diverse verifier tree search, Beeching et al. 2024);
  particle_filter  resample by weight (Puri et al. 2025: every step, weights from the
                   current PRM score; or proper SMC with ESS-triggered resampling).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tts_jax.smc.engine import Particles, SMCConfig


def _check(n: int, m: int):
  if m < 1 or n % m:
    raise ValueError(f"expansions M={m} must divide the number of particles N={n}")


def best_of_n(num_particles: int, **kw) -> SMCConfig:
  """N independent particles (no selection): scores at every step, nothing else."""
  return SMCConfig(num_particles=num_particles, select="none", **kw)


def beam_search(num_particles: int, expansions: int, **kw) -> SMCConfig:
  """Step-level beam search: beam width N / M, M expansions per beam."""
  _check(num_particles, expansions)
  return SMCConfig(num_particles=num_particles, select="beam", beam_width=num_particles // expansions,
                   group_size=0, **kw)


def dvts(num_particles: int, expansions: int, **kw) -> SMCConfig:
  """DVTS: N / M independent subtrees, each a width-1 beam search with M expansions."""
  _check(num_particles, expansions)
  return SMCConfig(num_particles=num_particles, select="beam", beam_width=1, group_size=expansions, **kw)


def particle_filter(num_particles: int, **kw) -> SMCConfig:
  """Particle filtering (select="resample"); pass resampler / ess_threshold / incremental."""
  return SMCConfig(num_particles=num_particles, select="resample", **kw)


def top_distinct(particles: Particles, k: int) -> tuple[jax.Array, jax.Array]:
  """The k best distinct particles of each prompt by final potential.

  Returns (int32[B, k] particle indices, best first; bool[B, k] valid: False where a
  prompt has fewer than k distinct particles).
  """
  score, h, length = particles.log_potential, particles.hash, particles.length
  n = score.shape[1]
  if not 1 <= k <= n:
    raise ValueError(f"k must be in [1, N={n}], got {k}")
  idx = jnp.arange(n)

  def one(score, h, length):
    same = (length[:, None] == length[None, :]) & jnp.all(h[:, None] == h[None, :], axis=-1)
    dup = jnp.any(same & (idx[None, :] < idx[:, None]), axis=1)
    order = jnp.lexsort((idx, -score, dup))[:k]
    return order, ~dup[order]

  return jax.vmap(one)(score, h, length)
