"""Sequential Monte Carlo: the particle state and engine, selection strategies, resampling,
twisted SMC (optimal tabular twists, contrastive twist learning), log Z bounds, particle Gibbs."""

from tts_jax.smc.bounds import LogZBounds, log_z_bounds
from tts_jax.sampling.inputs import prompt_keys
from tts_jax.smc.driver import run_smc
from tts_jax.smc.engine import (SMCConfig, SMCModels, SMCParams, apply_selection, cache_schedule, extend,
                                grow_particles, init_particles, reweight, run, token_step)
from tts_jax.smc.gibbs import GibbsChain, particle_gibbs
from tts_jax.smc.one_of import OneOf
from tts_jax.smc.particle_filter import particle_filter
from tts_jax.smc.particles import Particles, move, take_particles
from tts_jax.smc.resample import Resample
from tts_jax.smc.resampling import SCHEMES, ess, get_resampler, multinomial, residual, stratified, systematic
from tts_jax.smc.strategy import NoSelect, Selection, SelectionStrategy, copy_selected, keep_all
from tts_jax.smc.twists import CTLConfig, ctl_loss, optimal_tabular_twists, token_log_twists, train_twists

__all__ = ["LogZBounds", "log_z_bounds", "SMCConfig", "SMCModels", "SMCParams", "apply_selection", "cache_schedule",
           "extend", "grow_particles", "init_particles", "token_step", "prompt_keys", "reweight", "run", "run_smc", "Particles", "move", "take_particles",
           "Resample", "SCHEMES", "ess", "get_resampler", "multinomial", "residual", "stratified", "systematic",
           "NoSelect", "OneOf", "Selection", "SelectionStrategy", "copy_selected", "keep_all", "CTLConfig", "ctl_loss",
           "optimal_tabular_twists", "token_log_twists", "train_twists", "particle_filter", "GibbsChain",
           "particle_gibbs"]
