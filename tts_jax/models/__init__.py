"""Decoder LMs (Llama-3, Qwen2/2.5, Qwen3), their KV caches, Hugging Face loading, the tabular
LM for exact tests, value and twist heads; all behind the `CausalLM` contract."""

from tts_jax.models.config import ModelConfig, RopeScaling, qwen2_config
from tts_jax.models.contract import Cache, CausalLM
from tts_jax.models.lm import KVCache, LanguageModel, PrefixCache, abstract, forward, init
from tts_jax.models.padding import PAD_MULTIPLE, pad_prompts

__all__ = ["ModelConfig", "RopeScaling", "qwen2_config", "Cache", "CausalLM", "KVCache", "LanguageModel",
           "PrefixCache", "abstract", "forward", "init", "PAD_MULTIPLE", "pad_prompts"]
