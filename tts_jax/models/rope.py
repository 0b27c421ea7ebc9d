"""Rotary position embeddings (half-rotation layout of Hugging Face Llama/Qwen)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.models.config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> np.ndarray:
  """float32[D/2] inverse frequencies, with the config's rope scaling applied."""
  dim = config.head_dim
  inv = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
  inv = inv.astype(np.float32)
  scaling = config.rope_scaling
  if scaling is None or scaling.rope_type == "default":
    return inv
  if scaling.rope_type == "linear":
    return (inv / np.float32(scaling.factor)).astype(np.float32)
  # llama3: keep high frequencies, divide low ones by `factor`, interpolate between.
  factor = scaling.factor
  low, high = scaling.low_freq_factor, scaling.high_freq_factor
  old_len = scaling.original_max_position_embeddings
  low_wavelen, high_wavelen = old_len / low, old_len / high
  wavelen = 2 * math.pi / inv
  scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos, sin tables float32[..., D] for int positions of any shape."""
  inv = jnp.asarray(inverse_frequencies(config))
  freqs = positions.astype(jnp.float32)[..., None] * inv
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates x: [..., T, heads, D] by tables cos/sin: [..., T, D]."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos = cos[..., None, :].astype(x.dtype)
  sin = sin[..., None, :].astype(x.dtype)
  return x * cos + rotated * sin
