"""The Flax NNX decoder: Llama-3 / Qwen2 / Qwen2.5 / Qwen3 in one module.

The module only does the per-token math. How attention reads and writes a KV
cache is decided by the caller through an `attend` callback, so the same
weights serve full-sequence forward passes, prompt prefill and shared-prefix
decoding (see `tts_jax.models.lm`). Above `tts_jax.models.lm` nobody sees a
Module: the model is split once into a graph definition and a params pytree.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from tts_jax.models.config import ModelConfig
from tts_jax.models.rope import apply_rope

# attend(layer_index, q: [..., Tq, Hkv, G, D], k: [..., Tq, Hkv, D], v) -> [..., Tq, Hkv, G, D]
AttendFn = Callable[[int, jax.Array, jax.Array, jax.Array], jax.Array]

_init = nnx.initializers.normal(0.02)


class RMSNorm(nnx.Module):
  """y = w * x / rms(x), normalised in float32 and cast back (as Hugging Face does)."""

  def __init__(self, dim: int, eps: float, dtype):
    self.weight = nnx.Param(jnp.ones((dim,), dtype))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return self.weight[...] * xf.astype(x.dtype)


class Linear(nnx.Module):
  """y = x @ kernel (+ bias), kernel: [in, out]."""

  def __init__(self, d_in: int, d_out: int, *, bias: bool, dtype, rngs: nnx.Rngs):
    self.kernel = nnx.Param(_init(rngs.params(), (d_in, d_out), jnp.float32).astype(dtype))
    self.bias = nnx.Param(jnp.zeros((d_out,), dtype)) if bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.matmul(x, self.kernel[...], preferred_element_type=jnp.float32).astype(x.dtype)  # f32 accumulation
    if self.bias is not None:
      y = y + self.bias[...]
    return y


class Attention(nnx.Module):
  """GQA projections, optional q/k RMSNorm (Qwen3), RoPE."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    c, dt = config, config.jnp_dtype
    self.config = c
    self.q_proj = Linear(c.hidden_size, c.num_heads * c.head_dim, bias=c.attention_bias, dtype=dt, rngs=rngs)
    self.k_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.attention_bias, dtype=dt, rngs=rngs)
    self.v_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.attention_bias, dtype=dt, rngs=rngs)
    self.o_proj = Linear(c.num_heads * c.head_dim, c.hidden_size, bias=c.attention_out_bias, dtype=dt, rngs=rngs)
    if c.qk_norm:
      self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps, dt)
      self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps, dt)
    else:
      self.q_norm = self.k_norm = None

  def __call__(self, x, cos, sin, attend: AttendFn, layer: int, query_at=None):
    """x: [..., T, H] -> [..., T, H]; cos/sin: [..., T, D]. query_at: optional int32[..., Q],
    queries only at those positions (keys and values at all T): -> [..., Q, H]."""
    c = self.config
    lead = x.shape[:-1]
    xq, cos_q, sin_q = x, cos, sin
    if query_at is not None:
      at = lambda y: jnp.take_along_axis(y, query_at[..., None], axis=-2)  # noqa: E731
      xq, cos_q, sin_q = at(x), at(cos), at(sin)
    lead_q = xq.shape[:-1]
    q = self.q_proj(xq).reshape(*lead_q, c.num_heads, c.head_dim)
    k = self.k_proj(x).reshape(*lead, c.num_kv_heads, c.head_dim)
    v = self.v_proj(x).reshape(*lead, c.num_kv_heads, c.head_dim)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k = apply_rope(q, cos_q, sin_q), apply_rope(k, cos, sin)
    q = q.reshape(*lead_q, c.num_kv_heads, c.num_groups, c.head_dim)
    out = attend(layer, q, k, v).astype(x.dtype)
    return self.o_proj(out.reshape(*lead_q, c.num_heads * c.head_dim))


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    c, dt = config, config.jnp_dtype
    self.gate_proj = Linear(c.hidden_size, c.intermediate_size, bias=False, dtype=dt, rngs=rngs)
    self.up_proj = Linear(c.hidden_size, c.intermediate_size, bias=False, dtype=dt, rngs=rngs)
    self.down_proj = Linear(c.intermediate_size, c.hidden_size, bias=False, dtype=dt, rngs=rngs)

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
  """Pre-norm decoder block."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    dt = config.jnp_dtype
    self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dt)
    self.self_attn = Attention(config, rngs)
    self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dt)
    self.mlp = MLP(config, rngs)

  def __call__(self, h, cos, sin, attend: AttendFn, layer: int, query_at=None):
    """h [..., T, H] -> [..., T, H], or [..., Q, H] at `query_at` int32[..., Q] only."""
    out = self.self_attn(self.input_layernorm(h), cos, sin, attend, layer, query_at)
    if query_at is not None:
      h = jnp.take_along_axis(h, query_at[..., None], axis=-2)
    h = h + out
    return h + self.mlp(self.post_attention_layernorm(h))


class Decoder(nnx.Module):
  """Token embedding, decoder blocks, final norm and LM head."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    dt = config.jnp_dtype
    self.config = config
    self.embed_tokens = nnx.Param(_init(rngs.params(), (config.vocab_size, config.hidden_size),
                                        jnp.float32).astype(dt))
    self.layers = nnx.List([Block(config, rngs) for _ in range(config.num_layers)])
    self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dt)
    if config.tie_word_embeddings:
      self.lm_head = None
    else:
      # [V, H] like the embedding (and torch's lm_head.weight): the logits contract H, the
      # contiguous axis, which XLA's CPU matmul runs ~2x faster than [H, V] at decode shapes.
      self.lm_head = nnx.Param(_init(rngs.params(), (config.vocab_size, config.hidden_size),
                                     jnp.float32).astype(dt))

  def hidden(self, tokens: jax.Array, cos: jax.Array, sin: jax.Array, attend: AttendFn,
             query_at: jax.Array | None = None) -> jax.Array:
    """tokens int32[..., T] -> final normed hidden states [..., T, H] (model dtype). With
    query_at int32[..., Q], only at those positions ([..., Q, H]): the last block computes its
    queries, attention output and MLP there only (its keys and values at all T), so a caller
    that reads a few positions (an ORM's last token) skips most of the last layer."""
    h = jnp.take(self.embed_tokens[...], tokens, axis=0)
    last = len(self.layers) - 1
    for i, block in enumerate(self.layers):
      h = block(h, cos, sin, attend, i, query_at if i == last else None)
    return self.norm(h)

  def logits(self, h: jax.Array) -> jax.Array:
    """[..., H] hidden -> float32[..., V] logits."""
    w = self.embed_tokens[...] if self.lm_head is None else self.lm_head[...]  # [V, H]
    return jnp.einsum("...h,vh->...v", h, w, preferred_element_type=jnp.float32)

  def output(self, h: jax.Array) -> jax.Array:
    """What `LanguageModel.prefill/decode/forward` return per position: next-token logits
    float32[..., V] here; heads on the same trunk (values, twists) override it."""
    return self.logits(h)
