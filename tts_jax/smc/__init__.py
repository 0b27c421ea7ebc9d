"""Sequential Monte Carlo: resampling schemes and the effective sample size (the particle
engine and its methods build on these)."""

from tts_jax.smc.resampling import SCHEMES, ess, get_resampler, multinomial, residual, stratified, systematic

__all__ = ["SCHEMES", "ess", "get_resampler", "multinomial", "residual", "stratified", "systematic"]
