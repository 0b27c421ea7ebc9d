"""Reference attention (pure jnp): partial softmaxes merged by log-sum-exp.

The bottom of the library: the models use it for their XLA attention path and the
Pallas kernels of this package test against it. Every attention in the library is one or more calls of `attend_partial` over a
subset of keys, each returning its normalised output and its log-sum-exp, and
`merge_partials` combining them exactly. Shared-prefix ("cascade") decoding
attends over the prompt KV once per prompt (all N samples of a prompt are the
query rows of one matmul) and over each sample's private suffix KV, then merges.
The Pallas kernels of `tts_jax.kernels` implement the same two functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attend_partial(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                   scale: float) -> tuple[jax.Array, jax.Array]:
  """Softmax attention restricted to the keys where mask is True.

  Args:
    q: [B, Tq, Hkv, G, D] queries (G query heads share each key/value head).
    k: [B, Tk, Hkv, D] keys.
    v: [B, Tk, Hkv, D] values.
    mask: bool[B, Tq, Tk], True where query i may attend key j.
    scale: multiplier of q.k (usually D ** -0.5).

  Returns:
    out: float32[B, Tq, Hkv, G, D], normalised over the allowed keys (0 where none).
    lse: float32[B, Tq, Hkv, G], log-sum-exp of the scaled scores (-inf where none).
  """
  s = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=jnp.float32) * scale
  m = mask[:, None, None, :, :]
  s = jnp.where(m, s, -jnp.inf)
  s_max = jnp.max(s, axis=-1, keepdims=True)
  s_max = jnp.where(jnp.isfinite(s_max), s_max, 0.0)
  p = jnp.exp(s - s_max)
  l = jnp.sum(p, axis=-1, keepdims=True)
  o = jnp.einsum("bhgqk,bkhd->bqhgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  l_q = jnp.moveaxis(l[..., 0], 3, 1)  # [B, Tq, Hkv, G]
  o = o / jnp.where(l_q > 0, l_q, 1.0)[..., None]
  lse = jnp.where(l_q > 0, jnp.log(jnp.where(l_q > 0, l_q, 1.0)) + jnp.moveaxis(s_max[..., 0], 3, 1),
                  -jnp.inf)
  return o, lse


def merge_partials(o1: jax.Array, lse1: jax.Array, o2: jax.Array,
                   lse2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Exact softmax over the union of two disjoint key sets.

  Args:
    o1, o2: float32[..., D] normalised partial outputs.
    lse1, lse2: float32[...] their log-sum-exps (-inf for an empty key set).

  Returns:
    (out float32[..., D], lse float32[...]).
  """
  lse = jnp.logaddexp(lse1, lse2)
  safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
  w1 = jnp.where(jnp.isfinite(lse1), jnp.exp(lse1 - safe), 0.0)
  w2 = jnp.where(jnp.isfinite(lse2), jnp.exp(lse2 - safe), 0.0)
  return o1 * w1[..., None] + o2 * w2[..., None], lse


def causal_mask(lengths: jax.Array, t: int) -> jax.Array:
  """bool[B, T, T]: query i sees key j iff j <= i and j < length (right-padded rows)."""
  pos = jnp.arange(t)
  causal = pos[None, :] <= pos[:, None]
  valid = pos[None, :] < lengths[:, None]
  return causal[None] & valid[:, None, :]
