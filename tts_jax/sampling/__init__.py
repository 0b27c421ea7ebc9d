"""Logits processing, the shared token step, the jitted sampler (N samples from shared prompts;
`sample_jit` its traceable core, unchecked, for loops that sample inside jit), and prefix
continuation helpers (`suffix_prompts`, `splice`)."""

from tts_jax.sampling.logits import SamplingParams, process_logits
from tts_jax.sampling.prefixes import splice, suffix_prompts
from tts_jax.sampling.sampler import (FINISH_REASONS, LENGTH, LOW_CONFIDENCE, RUNNING, STOP, ConfidenceWindow, SampleOutput,
                                      sample, sample_jit)
from tts_jax.sampling.token_step import TokenDraw, draw_tokens

__all__ = ["SamplingParams", "process_logits", "FINISH_REASONS", "LENGTH", "LOW_CONFIDENCE", "RUNNING", "STOP",
           "ConfidenceWindow", "SampleOutput",
           "sample", "sample_jit", "splice", "suffix_prompts", "TokenDraw", "draw_tokens"]
