"""Compute accounting: tokens, FLOPs and KV-cache bytes of sampling and scoring.

FLOPs follow the usual transformer count (Kaplan et al. 2020): a forward pass over
one token at context length c costs 2 * N_matmul + 4 * L * c * (heads * head_dim),
N_matmul being the parameters used in matmuls (everything but the embedding
lookup; the LM head counts). Prompts are prefilled once per prompt (the KV cache
is shared by its samples); verifiers re-read prompt + completion per sample.
"""

from __future__ import annotations

import dataclasses

from tts_jax.models.config import ModelConfig


def matmul_params(config: ModelConfig, head_outputs: int | None = None) -> int:
  """Parameters that take part in matmuls per token (embedding lookup excluded).

  head_outputs: width of the output head (default vocab_size; 1 for a value head).
  """
  out = config.vocab_size if head_outputs is None else head_outputs
  emb = config.vocab_size * config.hidden_size
  total = config.num_params() - emb * (1 if config.tie_word_embeddings else 2)
  return total + config.hidden_size * out


def forward_flops(config: ModelConfig, num_tokens: float, context_start: float = 0.0,
                  head_outputs: int | None = None) -> float:
  """FLOPs of a causal forward pass over `num_tokens` tokens that follow `context_start`
  tokens already in the cache (attention to all earlier tokens and itself)."""
  d_attn = config.num_heads * config.head_dim
  # sum over tokens of their context length: context_start + 1, ..., context_start + num_tokens
  ctx_sum = num_tokens * context_start + num_tokens * (num_tokens + 1) / 2
  return 2.0 * matmul_params(config, head_outputs) * num_tokens + 4.0 * config.num_layers * d_attn * ctx_sum


def kv_bytes_per_token(config: ModelConfig) -> int:
  return 2 * config.num_layers * config.num_kv_heads * config.head_dim * config.jnp_dtype.itemsize


@dataclasses.dataclass(frozen=True)
class Cost:
  """Compute of one method on one problem (expected values when a budget is subsampled)."""

  prompt_tokens: float = 0.0
  generated_tokens: float = 0.0
  verifier_tokens: float = 0.0
  flops: float = 0.0
  kv_bytes: float = 0.0

  def __add__(self, other: "Cost") -> "Cost":
    return Cost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

  def scale(self, s: float) -> "Cost":
    return Cost(*(a * s for a in dataclasses.astuple(self)))

  def asdict(self) -> dict:
    return dataclasses.asdict(self)


def sampling_cost(config: ModelConfig, prompt_len: int, completion_lens) -> Cost:
  """One prompt prefilled once + one sample per entry of `completion_lens` (shared prefix)."""
  flops = forward_flops(config, prompt_len)
  gen = 0.0
  for n in completion_lens:
    flops += forward_flops(config, n, context_start=prompt_len)
    gen += n
  kv = kv_bytes_per_token(config) * (prompt_len + gen)
  return Cost(prompt_tokens=prompt_len, generated_tokens=gen, flops=flops, kv_bytes=kv)


def scoring_cost(config: ModelConfig, prompt_len: int, completion_lens) -> Cost:
  """A value model scoring each sample: a full forward over prompt + completion."""
  flops, toks = 0.0, 0.0
  for n in completion_lens:
    flops += forward_flops(config, prompt_len + n, head_outputs=1)
    toks += prompt_len + n
  return Cost(verifier_tokens=toks, flops=flops)
