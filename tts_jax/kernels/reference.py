"""Reference attention (pure jnp): partial softmaxes merged by log-sum-exp.

The bottom of the library: the models use it for their XLA attention path and the
Pallas kernels of this package test against it. Every attention in the library is one or more calls of `attend_partial` over a
subset of keys, each returning its normalised output and its log-sum-exp, and
`merge_partials` combining them exactly. Shared-prefix ("cascade") decoding
attends over the prompt KV once per prompt (all N samples of a prompt are the
query rows of one matmul) and over each sample's private suffix KV, then merges.
The Pallas kernels of `tts_jax.kernels` implement the same two functions.

Keys and values are head-major, [B, Hkv, Tk, D], the layout of every KV cache of the
library: each (row, KV head) reads its keys as one contiguous [Tk, D] block, which is what a
matmul over the keys wants. A model's projections give [B, T, Hkv, D] (`heads_major` moves
them once, when they are cached); with keys token-major, XLA transposed every layer's cache
at every decode step (BENCHMARKS.md, "Head-major KV caches").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def heads_major(x: jax.Array) -> jax.Array:
  """[B, T, Hkv, D] (a projection's output) -> [B, Hkv, T, D] (the caches' layout)."""
  return jnp.swapaxes(x, -3, -2)


def attend_partial(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                   scale: float) -> tuple[jax.Array, jax.Array]:
  """Softmax attention restricted to the keys where mask is True.

  Args:
    q: [B, Tq, Hkv, G, D] queries (G query heads share each key/value head).
    k: [B, Hkv, Tk, D] keys (head-major).
    v: [B, Hkv, Tk, D] values.
    mask: bool[B, Tq, Tk], True where query i may attend key j.
    scale: multiplier of q.k (usually D ** -0.5).

  Returns:
    out: float32[B, Tq, Hkv, G, D], normalised over the allowed keys (0 where none).
    lse: float32[B, Tq, Hkv, G], log-sum-exp of the scaled scores (-inf where none).
  """
  if q.shape[1] == 1:  # one query per row (decoding): multiply-and-reduce, whatever the row count
    return _attend_one(q, k, v, mask, scale)
  # Heads first and the G query heads of a key head folded into the query rows: one
  # [Tq * G, D] x [D, Tk] matmul per (row, key head). XLA:CPU runs the 5-D form with G
  # as a free dim plus transposes ~1.3x slower (scoring 1,600 rows x 64 tokens).
  b, tq, hkv, g, d = q.shape
  qh = jnp.transpose(q, (0, 2, 1, 3, 4)).reshape(b, hkv, tq * g, d)
  s = jnp.einsum("bhqd,bhkd->bhqk", qh, k, preferred_element_type=jnp.float32) * scale
  allowed = jnp.broadcast_to(mask[:, None, :, None, :], (b, 1, tq, g, mask.shape[-1])).reshape(b, 1, tq * g, -1)
  s = jnp.where(allowed, s, -jnp.inf)
  s_max = jnp.max(s, axis=-1)  # [B, Hkv, Tq * G]
  s_max = jnp.where(jnp.isfinite(s_max), s_max, 0.0)
  p = jnp.exp(s - s_max[..., None])
  l = jnp.sum(p, axis=-1)
  o = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  o = o / jnp.where(l > 0, l, 1.0)[..., None]
  lse = jnp.where(l > 0, jnp.log(jnp.where(l > 0, l, 1.0)) + s_max, -jnp.inf)
  o = jnp.transpose(o.reshape(b, hkv, tq, g, d), (0, 2, 1, 3, 4))
  lse = jnp.transpose(lse.reshape(b, hkv, tq, g), (0, 2, 1, 3))
  return o, lse


def _attend_one(q, k, v, mask, scale):
  """`attend_partial` for one query per row (decoding), as multiply-and-reduce over the keys.

  The same numbers as the einsum form up to float order, but XLA:CPU runs a batched dot whose
  batch dims are (row, head) as many tiny matmuls: for 1,600 samples x 96 suffix slots this
  form is ~4.5x faster (16 vs 75 ms per layer), and with head-major caches it is as fast at 16
  rows (a decode step of benchmarks/sampling.py: 13.1-13.4 against 13.4-15.7 ms), so decoding
  uses it at every row count and its numbers do not depend on how many rows a batch has.
  It reads K and V once.
  """
  qf = q[:, 0].astype(jnp.float32)  # [B, Hkv, G, D]
  s = jnp.sum(qf[:, :, :, None, :] * k[:, :, None, :, :].astype(jnp.float32), axis=-1) * scale  # [B, Hkv, G, Tk]
  s = jnp.where(mask[:, 0, None, None, :], s, -jnp.inf)
  s_max = jnp.max(s, axis=-1)  # [B, Hkv, G]
  s_max = jnp.where(jnp.isfinite(s_max), s_max, 0.0)
  p = jnp.exp(s - s_max[..., None])
  l = jnp.sum(p, axis=-1)
  o = jnp.sum(p[..., None] * v[:, :, None, :, :].astype(jnp.float32), axis=-2)  # [B, Hkv, G, D]
  o = o / jnp.where(l > 0, l, 1.0)[..., None]
  lse = jnp.where(l > 0, jnp.log(jnp.where(l > 0, l, 1.0)) + s_max, -jnp.inf)
  return o[:, None], lse[:, None]


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


# Causal attention over more than one block of this many queries skips the keys after each
# block (all masked): block i reads keys [0, (i + 1) * block). Scoring 1,600 rows x 64 tokens
# on CPU: 0.17 -> 0.13 s per layer (BENCHMARKS.md).
CAUSAL_BLOCK = 32


def attend_causal(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float,
                  block: int = CAUSAL_BLOCK) -> tuple[jax.Array, jax.Array]:
  """`attend_partial` for self-attention under a causal mask (mask[:, i, j] False for j > i,
  e.g. `causal_mask`): q [B, T, Hkv, G, D], k, v [B, Hkv, T, D], mask bool[B, T, T]. The
  same numbers; query block i only reads the keys before its end."""
  t = q.shape[1]
  if t <= block or k.shape[2] != t:
    return attend_partial(q, k, v, mask, scale)
  parts = [attend_partial(q[:, i:i + block], k[:, :, :i + block], v[:, :, :i + block],
                          mask[:, i:i + block, :i + block], scale) for i in range(0, t, block)]
  return tuple(jnp.concatenate(x, axis=1) for x in zip(*parts))


def causal_mask(lengths: jax.Array, t: int) -> jax.Array:
  """bool[B, T, T]: query i sees key j iff j <= i and j < length (right-padded rows)."""
  pos = jnp.arange(t)
  causal = pos[None, :] <= pos[:, None]
  valid = pos[None, :] < lengths[:, None]
  return causal[None] & valid[:, None, :]
