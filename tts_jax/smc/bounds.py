"""Bidirectional bounds on log Z and the KL estimates they give (Zhao et al. 2024, sec. 5).

For a target sigma = p phi / Z and a (twisted) proposal q:
  SMC lower bound   E[log Z_hat_SMC]  <= log Z   (any N, any resampling)
  CSMC upper bound  E[log Z_hat_CSMC] >= log Z   (particle 0 held to an exact sample of sigma)
  IWAE lower/upper  the same without resampling (importance sampling)
  ELBO = E_q[log w] (the N = 1 lower bound), EUBO = E_sigma[log w] (the N = 1 upper bound)
and KL(q || sigma) = log Z - ELBO, KL(sigma || q) = EUBO - log Z, so with log Z
between the lower and the upper bound:
  KL(q || sigma) in [lower - ELBO, upper - ELBO],  KL(sigma || q) in [EUBO - upper, EUBO - lower].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.smc.driver import run_smc
from tts_jax.smc.engine import SMCConfig
from tts_jax.smc.resample import Resample


@dataclasses.dataclass(frozen=True)
class LogZBounds:
  """Means over the prompts of a batch (float); *_se their standard errors."""

  smc_lower: float
  csmc_upper: float
  iwae_lower: float
  iwae_upper: float
  elbo: float
  eubo: float
  smc_lower_se: float
  csmc_upper_se: float
  iwae_lower_se: float
  iwae_upper_se: float
  elbo_se: float

  @property
  def kl_q_sigma(self) -> tuple[float, float]:
    """(low, high) estimate of KL(q || sigma)."""
    return self.smc_lower - self.elbo, self.csmc_upper - self.elbo

  @property
  def kl_sigma_q(self) -> tuple[float, float]:
    """(low, high) estimate of KL(sigma || q)."""
    return self.eubo - self.csmc_upper, self.eubo - self.smc_lower


def _mean_se(x):
  x = np.asarray(x, np.float64)
  return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def log_z_bounds(lm, params, prompt_tokens, prompt_lengths, key, *, cfg: SMCConfig, potential,
                 reference_tokens, reference_lengths, potential_params=None, twist=None,
                 twist_params=None) -> LogZBounds:
  """All bounds for B replicate prompts (each row one independent estimate).

  cfg: the SMC config (its selection is replaced by multinomial resampling, threshold 1,
    so that the SMC and CSMC runs are the same algorithm). reference_tokens int32[B, T],
    reference_lengths int32[B]: one exact sample of sigma per row.
  """
  smc = dataclasses.replace(cfg, select=Resample("multinomial", 1.0))
  iwae = dataclasses.replace(cfg, select=Resample("multinomial", 0.0))
  kw = dict(potential=potential, potential_params=potential_params, twist=twist, twist_params=twist_params)
  ref = dict(reference_tokens=reference_tokens, reference_lengths=reference_lengths)
  keys = jax.random.split(key, 4)
  runs = {
      "smc_lower": run_smc(lm, params, prompt_tokens, prompt_lengths, keys[0], cfg=smc, **kw),
      "csmc_upper": run_smc(lm, params, prompt_tokens, prompt_lengths, keys[1], cfg=smc, **kw, **ref),
      "iwae_lower": run_smc(lm, params, prompt_tokens, prompt_lengths, keys[2], cfg=iwae, **kw),
      "iwae_upper": run_smc(lm, params, prompt_tokens, prompt_lengths, keys[3], cfg=iwae, **kw, **ref),
  }
  est = {k: _mean_se(v.final_log_z()) for k, v in runs.items()}
  elbo = jnp.mean(runs["iwae_lower"].log_weights, axis=1)  # every particle's log w is an ELBO sample
  eubo = runs["iwae_upper"].log_weights[:, 0]  # the reference's log w is an EUBO sample
  return LogZBounds(smc_lower=est["smc_lower"][0], csmc_upper=est["csmc_upper"][0], iwae_lower=est["iwae_lower"][0],
                    iwae_upper=est["iwae_upper"][0], elbo=_mean_se(elbo)[0], eubo=_mean_se(eubo)[0],
                    smc_lower_se=est["smc_lower"][1], csmc_upper_se=est["csmc_upper"][1],
                    iwae_lower_se=est["iwae_lower"][1], iwae_upper_se=est["iwae_upper"][1], elbo_se=_mean_se(elbo)[1])
