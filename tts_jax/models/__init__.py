"""Decoder LMs (Llama-3, Qwen2/2.5, Qwen3), their KV caches, and Hugging Face loading."""

from tts_jax.models.config import ModelConfig, RopeScaling, qwen2_config
from tts_jax.models.lm import KVCache, LanguageModel, PrefixCache, abstract, forward, init

__all__ = ["ModelConfig", "RopeScaling", "qwen2_config", "KVCache", "LanguageModel", "PrefixCache",
           "abstract", "forward", "init"]
