"""Verifier-guided search on the particle engine: step-level beam search, DVTS, best-of-N."""

from tts_jax.search.beam import beam_search, best_of_n, dvts, particle_filter, top_distinct

__all__ = ["beam_search", "best_of_n", "dvts", "particle_filter", "top_distinct"]
