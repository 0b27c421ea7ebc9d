"""MCMC over completions: QAlign / QUEST Metropolis-Hastings (`qalign`)."""

from tts_jax.mcmc.qalign import QAlignChains, qalign, splice, suffix_prompts

__all__ = ["QAlignChains", "qalign", "splice", "suffix_prompts"]
