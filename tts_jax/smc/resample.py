"""The SMC selection strategy: resample by weight when the effective sample size is low."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from tts_jax.smc.particles import Particles
from tts_jax.smc.resampling import SCHEMES, ess, get_resampler
from tts_jax.smc.strategy import Selection, SelectionStrategy


@dataclasses.dataclass(frozen=True)
class Resample(SelectionStrategy):
  """Resample each prompt's particles with `scheme` when ESS < ess_threshold x N
  (1 = after every step, 0 = never: importance sampling). Resampled weights are reset
  to 0 and log Z accumulates the log mean weight, so Z_hat stays unbiased. A log-weight of
  -inf is a zero weight; a prompt with no positive weight left is failed: it is never
  resampled and its log Z is -inf (NaN and +inf potentials are errors: `run_smc`)."""

  scheme: str = "systematic"
  ess_threshold: float = 0.5

  traced: ClassVar[tuple[str, ...]] = ("ess_threshold",)  # one program for every threshold

  def __post_init__(self):
    if self.scheme not in SCHEMES:
      raise ValueError(f"unknown resampler {self.scheme!r}; choose from {sorted(SCHEMES)}")
    if not 0.0 <= self.ess_threshold <= 1.0:
      raise ValueError(f"ess_threshold must be in [0, 1], got {self.ess_threshold}")

  def select(self, keys: jax.Array, particles: Particles) -> Selection:
    lw = particles.log_weights
    b, n = lw.shape
    need = (ess(lw) < self.ess_threshold * n) | (self.ess_threshold >= 1.0)  # 1: every step
    # A prompt whose every weight is zero (log -inf) has failed: never resampled (there is
    # nothing to draw from); its log Z is -inf.
    need = need & jnp.any(lw > -jnp.inf, axis=-1)
    resampler = get_resampler(self.scheme)
    ancestors = jax.vmap(lambda k, w: resampler(k, w, n))(keys, lw)
    return Selection(ancestors=ancestors, log_weights=jnp.zeros_like(lw),
                     log_z_increment=jax.nn.logsumexp(lw, axis=-1) - jnp.log(n), selected=need)

  def check_reference(self) -> None:
    if self.scheme != "multinomial" or self.ess_threshold not in (0.0, 1.0):
      raise ValueError("conditional SMC (a reference) needs Resample('multinomial') with ess_threshold 0 or 1; "
                       f"got {self.scheme!r}, {self.ess_threshold}")
