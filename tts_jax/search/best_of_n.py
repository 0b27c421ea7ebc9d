"""Best-of-N on the engine: N independent particles, scored at every step, never selected."""

from __future__ import annotations

from tts_jax.smc import NoSelect, SMCConfig


def best_of_n(num_particles: int, **kw) -> SMCConfig:
  """N independent samples (`NoSelect`); other SMCConfig fields as keywords."""
  return SMCConfig(num_particles=num_particles, select=NoSelect(), **kw)
