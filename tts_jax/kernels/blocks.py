"""Pieces shared by the Pallas kernels: padding, the online-softmax step, scalar inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def pad_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
  """Zero-pads `axis` of x up to `size` (a no-op, no copy, when it is already that long)."""
  pad = size - x.shape[axis]
  if pad < 0:
    raise ValueError(f"cannot pad axis {axis} of {x.shape} down to {size}")
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def online_softmax_step(q, k, v, valid, scale: float, carry):
  """One block of a running softmax.

  q [R, D] and k, v [bk, D] in their storage dtype (the products accumulate in float32;
  probabilities are cast to v's dtype for the second matmul, as flash attention does);
  valid bool[R or 1, bk]; carry = (m [R, 1], l [R, 1], acc [R, D]) float32: the running
  max, sum of exp(score - m) and unnormalised output.
  """
  m, l, acc = carry
  s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
  s = jnp.where(valid, s, -jnp.inf)
  m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
  safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
  p = jnp.exp(s - safe)
  alpha = jnp.exp(m - safe)  # 0 while m is -inf
  pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return m_new, alpha * l + jnp.sum(p, axis=-1, keepdims=True), alpha * acc + pv


def scalar_spec(shape: tuple[int, ...], tpu: bool) -> pl.BlockSpec:
  """A small int32 table every program reads scalars from (lengths): whole, in SMEM on TPU."""
  if tpu:
    from jax.experimental.pallas import tpu as pltpu  # noqa: PLC0415 (TPU only)
    return pl.BlockSpec(memory_space=pltpu.SMEM)
  return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def kv_spec(block_shape: tuple, index_map, tpu: bool) -> pl.BlockSpec:
  """The BlockSpec of a K or V block: single-buffered in VMEM on TPU (the plans size the
  on-chip bytes for one buffer: `tts_jax.kernels.plan`), the backend's default elsewhere."""
  if tpu:
    return pl.BlockSpec(block_shape, index_map, pipeline_mode=pl.Buffered(1))
  return pl.BlockSpec(block_shape, index_map)
