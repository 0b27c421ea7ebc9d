"""Logits processing, the shared token step, and the jitted sampler (N samples from shared prompts)."""

from tts_jax.sampling.logits import SamplingParams, process_logits
from tts_jax.sampling.sampler import FINISH_REASONS, LENGTH, RUNNING, STOP, SampleOutput, sample
from tts_jax.sampling.token_step import TokenDraw, draw_tokens

__all__ = ["SamplingParams", "process_logits", "FINISH_REASONS", "LENGTH", "RUNNING", "STOP", "SampleOutput",
           "sample", "TokenDraw", "draw_tokens"]
