"""Verifier-guided search: on the particle engine, step-level beam search, DVTS, best-of-N
(and, from `tts_jax.smc`, particle filtering); Monte Carlo tree search over steps (`mcts`); steps resampled until a verifier accepts them
(`local_acceptance`, LATTS's resample move); beam search with ETS's KV-aware survivor choice
(`ets_beam_search`)."""

from tts_jax.search.beam import Beam, beam_search, dvts
from tts_jax.search.best_of_n import best_of_n
from tts_jax.search.ets import KVAwareBeam, ets_beam_search
from tts_jax.search.latts import LocalAcceptance, local_acceptance
from tts_jax.search.mcts import Tree, mcts
from tts_jax.smc import particle_filter

__all__ = ["Beam", "beam_search", "dvts", "best_of_n", "particle_filter", "Tree", "mcts", "LocalAcceptance", "local_acceptance",
           "KVAwareBeam", "ets_beam_search"]
