"""Model configuration: one frozen dataclass for every supported decoder family.

Configs are hashable so they can be static arguments of `jax.jit`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

RopeType = Literal["default", "linear", "llama3"]
AttentionImpl = Literal["auto", "xla", "pallas"]
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
SUPPORTED_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling, as in Hugging Face `rope_scaling` / `rope_parameters`.

  `rope_type="llama3"` uses `factor`, `low_freq_factor`, `high_freq_factor` and
  `original_max_position_embeddings`; `"linear"` divides every frequency by `factor`.
  """

  rope_type: RopeType = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    if self.rope_type not in SUPPORTED_ROPE_TYPES:
      raise ValueError(
          f"unsupported rope_type {self.rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
      )


MATMUL_PRECISIONS = ("float32", "tensorfloat32", "bfloat16", "default")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A decoder-only transformer of the Llama-3 / Qwen2 / Qwen2.5 / Qwen3 families.

  Attributes:
    vocab_size: V, rows of the embedding table.
    hidden_size: model width H.
    intermediate_size: SwiGLU hidden width.
    num_layers: number of decoder blocks.
    num_heads: query heads.
    num_kv_heads: key/value heads (GQA when < num_heads; must divide num_heads).
    head_dim: per-head width D (Qwen3 sets it explicitly; else hidden_size // num_heads).
    rope_theta: RoPE base.
    rope_scaling: optional frequency scaling.
    rms_norm_eps: epsilon of every RMSNorm.
    tie_word_embeddings: logits use the transposed embedding table.
    attention_bias: q/k/v projections have a bias (Qwen2/2.5: True).
    attention_out_bias: the output projection has a bias (Llama/Qwen3 with attention_bias).
    qk_norm: per-head RMSNorm on q and k before RoPE (Qwen3).
    max_position_embeddings: longest prompt + generation the model accepts.
    dtype: "float32" or "bfloat16"; parameters and activations. Softmax, norms and
      logits are always computed in float32.
    attention_impl: "xla" (pure jnp attention), "pallas" (the Pallas kernels of
      `tts_jax.kernels`; interpret mode on CPU) or "auto" (Pallas on GPU and TPU,
      XLA elsewhere until a kernel is measured faster; see `tts_jax.kernels.attention_path`).
    matmul_precision: what the model's matmuls compute in, on every backend: "float32"
      (default: float32 means float32, also on GPUs whose default is TF32), "tensorfloat32",
      "bfloat16" or "default" (the backend's choice). Products always accumulate in float32.
    family: informational name of the architecture ("llama", "qwen2", "qwen3").
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  attention_out_bias: bool = False
  qk_norm: bool = False
  max_position_embeddings: int = 4096
  dtype: str = "float32"
  attention_impl: AttentionImpl = "auto"
  matmul_precision: str = "float32"
  family: str = "qwen2"

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "max_position_embeddings"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
      )
    if self.dtype not in SUPPORTED_DTYPES:
      raise ValueError(f"unsupported dtype {self.dtype!r}; supported: {', '.join(SUPPORTED_DTYPES)}")
    if self.attention_impl not in ("auto", "xla", "pallas"):
      raise ValueError(f"attention_impl must be 'auto', 'xla' or 'pallas', got {self.attention_impl!r}")
    if self.matmul_precision not in MATMUL_PRECISIONS:
      raise ValueError(f"matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)}, "
                       f"got {self.matmul_precision!r}")

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def num_groups(self) -> int:
    """Query heads per key/value head (G)."""
    return self.num_heads // self.num_kv_heads

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Parameter count (embedding counted once when tied)."""
    h, d = self.hidden_size, self.head_dim
    attn = h * d * (self.num_heads * 2 + self.num_kv_heads * 2)
    if self.attention_bias:
      attn += d * (self.num_heads + 2 * self.num_kv_heads)
    if self.attention_out_bias:
      attn += h
    if self.qk_norm:
      attn += 2 * d
    mlp = 3 * h * self.intermediate_size
    block = attn + mlp + 2 * h
    emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
    return self.num_layers * block + emb + h


def qwen2_config(**overrides) -> ModelConfig:
  """A small Qwen2-architecture config (qkv bias, untied unless overridden)."""
  base = dict(vocab_size=1024, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
              num_kv_heads=2, head_dim=64, rope_theta=10000.0, attention_bias=True, family="qwen2")
  base.update(overrides)
  return ModelConfig(**base)
