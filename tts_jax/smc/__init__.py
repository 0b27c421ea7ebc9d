"""Sequential Monte Carlo: resampling schemes, ESS and the particle engine."""

from tts_jax.smc.engine import Particles, SMCConfig, run_smc
from tts_jax.smc.resampling import SCHEMES, ess, get_resampler, multinomial, residual, stratified, systematic

__all__ = ["Particles", "SMCConfig", "run_smc", "SCHEMES", "ess", "get_resampler", "multinomial", "residual",
           "stratified", "systematic"]
