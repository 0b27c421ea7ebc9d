"""Logits processing and the jitted sampler (N samples from shared prompts)."""

from tts_jax.sampling.logits import SamplingParams, process_logits
from tts_jax.sampling.sampler import FINISH_REASONS, LENGTH, RUNNING, STOP, SampleOutput, pad_prompts, sample

__all__ = ["SamplingParams", "process_logits", "FINISH_REASONS", "LENGTH", "RUNNING", "STOP",
           "SampleOutput", "pad_prompts", "sample"]
