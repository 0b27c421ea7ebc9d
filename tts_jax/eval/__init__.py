"""The main job: experiments (model + task + methods + budgets), the methods (pool selection
engine search and MCMC) behind one protocol, compute accounting, exact metrics, the resumable
runner, and summaries (table, plot)."""

from tts_jax.eval.allocation import ComputeOptimal
from tts_jax.eval.batch import Batch
from tts_jax.eval.cost import Cost, forward_flops, kv_bytes_per_token, pool_cost, search_cost
from tts_jax.eval.early_stop_methods import DeepConf
from tts_jax.eval.experiment import Experiment
from tts_jax.eval.mcmc_methods import QAlign
from tts_jax.eval.method import Method, Outcome
from tts_jax.eval.pool import Pool, build_pool
from tts_jax.eval.pool_methods import (RPC, AdaptiveConsistency, BestOfN, InverseEntropyVote, MajorityVote, PassAtK,
                                       PoolMethod, ShortestMajority, WeightedMajority)
from tts_jax.eval.pruning_methods import SlimSC
from tts_jax.eval.runner import ResultsMismatch, run_experiment
from tts_jax.eval.search_methods import DVTS, ETS, BeamSearch, Greedy, ParticleFiltering, ParticleGibbs, SearchMethod
from tts_jax.eval.summary import format_table, plot, summarize
from tts_jax.eval.tree_methods import MCTS, LocalAcceptanceSearch

__all__ = ["Batch", "Cost", "forward_flops", "kv_bytes_per_token", "pool_cost", "search_cost", "Experiment", "Method",
           "Outcome", "Pool", "build_pool", "RPC", "AdaptiveConsistency", "BestOfN",
           "InverseEntropyVote", "MajorityVote", "PassAtK", "PoolMethod", "ShortestMajority", "WeightedMajority",
           "ResultsMismatch", "run_experiment", "DVTS", "BeamSearch", "Greedy", "ParticleFiltering", "ParticleGibbs",
           "SearchMethod", "ETS", "ComputeOptimal", "SlimSC", "QAlign", "MCTS", "LocalAcceptanceSearch", "DeepConf", "format_table", "plot", "summarize"]
