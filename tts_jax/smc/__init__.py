"""Sequential Monte Carlo: resampling, the particle engine, potentials, twists, log Z bounds."""

from tts_jax.smc.bounds import LogZBounds, log_z_bounds
from tts_jax.smc.engine import SELECTS, Particles, SMCConfig, run_smc
from tts_jax.smc.potentials import SequencePotential, ValuePotential, as_potential, gather_state
from tts_jax.smc.resampling import SCHEMES, ess, get_resampler, multinomial, residual, stratified, systematic
from tts_jax.smc.twists import CTLConfig, ctl_loss, optimal_tabular_twists, token_log_twists, train_twists

__all__ = ["LogZBounds", "log_z_bounds", "SELECTS", "Particles", "SMCConfig", "run_smc", "SequencePotential",
           "ValuePotential", "as_potential", "gather_state", "SCHEMES", "ess", "get_resampler", "multinomial",
           "residual", "stratified", "systematic", "CTLConfig", "ctl_loss", "optimal_tabular_twists",
           "token_log_twists", "train_twists"]
