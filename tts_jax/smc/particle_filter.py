"""Particle filtering as an engine configuration."""

from __future__ import annotations

from tts_jax.smc.engine import SMCConfig
from tts_jax.smc.resample import Resample


def particle_filter(num_particles: int, scheme: str = "systematic", ess_threshold: float = 0.5, **kw) -> SMCConfig:
  """Particle filtering: `Resample(scheme, ess_threshold)` after every step. Other SMCConfig
  fields as keywords; `incremental=False` gives the weights of Puri et al. (2025)."""
  return SMCConfig(num_particles=num_particles, select=Resample(scheme, ess_threshold), **kw)
