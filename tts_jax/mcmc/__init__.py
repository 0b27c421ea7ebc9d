"""MCMC over completions: QAlign / QUEST Metropolis-Hastings (`qalign`)."""

from tts_jax.mcmc.qalign import QAlignChains, qalign

__all__ = ["QAlignChains", "qalign"]
