"""Causal flash attention for prefill (Pallas): blocked online softmax, GQA, ragged lengths.

One program per (batch row, query head, query block) keeps a running max m, sum l and
output accumulator over the key blocks it may see (up to the causal diagonal and the
row's length), so the [T, T] score matrix never exists. Sequences are right-padded:
row b holds `lengths[b]` real tokens; outputs past them are meaningless (zeros here).
Lengths that are not multiples of the block sizes are padded internally.

    out, lse = flash_prefill(q, k, v, lengths)          # Pallas (interpret=True on CPU)
    out, lse = flash_prefill_reference(q, k, v, lengths) # pure jnp, same contract

Shapes follow `tts_jax.kernels.reference`: q [B, T, Hkv, G, D], k / v [B, T, Hkv, D];
out float32[B, T, Hkv, G, D], lse float32[B, T, Hkv, G].
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from tts_jax.kernels.blocks import check_powers_of_two, pad_to_multiple
from tts_jax.kernels.dispatch import compiler_params as _compiler_params
from tts_jax.kernels.reference import attend_partial, causal_mask


@dataclasses.dataclass(frozen=True)
class FlashConfig:
  """Block sizes: block_q query rows and block_k keys per inner step."""

  block_q: int = 64
  block_k: int = 64

  def __post_init__(self):
    check_powers_of_two(self)


def flash_prefill_reference(q, k, v, lengths, scale: float | None = None):
  """Pure-jnp causal attention with the kernel's contract (see module docstring)."""
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  return attend_partial(q, k, v, causal_mask(lengths, q.shape[1]), scale)


def _kernel(len_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, scale, block_q, block_k):
  b, i = pl.program_id(0), pl.program_id(2)
  length = len_ref[b]
  q = q_ref[...].astype(jnp.float32) * scale  # [bq, D]
  q_pos = i * block_q + jnp.arange(block_q)
  d = q.shape[-1]
  # Key blocks up to the causal diagonal of this query block and the row's length.
  last = jnp.minimum((i + 1) * block_q, length)
  num_blocks = (last + block_k - 1) // block_k

  def body(j, carry):
    m, l, acc = carry
    start = pl.multiple_of(j * block_k, block_k)
    k = k_ref[pl.ds(start, block_k), :].astype(jnp.float32)
    v = v_ref[pl.ds(start, block_k), :].astype(jnp.float32)
    s = jnp.dot(q, k.T, preferred_element_type=jnp.float32)  # [bq, bk]
    k_pos = start + jnp.arange(block_k)
    s = jnp.where((k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] < length), s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.exp(s - safe[:, None])
    alpha = jnp.exp(m - safe)  # 0 while m is -inf
    l = alpha * l + jnp.sum(p, axis=-1)
    acc = alpha[:, None] * acc + jnp.dot(p, v, preferred_element_type=jnp.float32)
    return m_new, l, acc

  init = (jnp.full((block_q,), -jnp.inf, jnp.float32), jnp.zeros((block_q,), jnp.float32),
          jnp.zeros((block_q, d), jnp.float32))
  m, l, acc = jax.lax.fori_loop(0, num_blocks, body, init)
  ok = l > 0
  o_ref[...] = (acc / jnp.where(ok, l, 1.0)[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(ok, jnp.log(jnp.where(ok, l, 1.0)) + m, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("scale", "config", "interpret", "platform"))
def flash_prefill(q, k, v, lengths, scale: float | None = None, config: FlashConfig = FlashConfig(),
                  interpret: bool = False, platform: str | None = None):
  """Causal flash attention over right-padded rows.

  Args:
    q: [B, T, Hkv, G, D]; k, v: [B, T, Hkv, D]; lengths: int32[B] real tokens per row.
    scale: q.k multiplier (default D ** -0.5). config: block sizes.
    interpret: run the Pallas kernel in interpret mode (required on CPU).
    platform: the lowering target ("gpu" selects the Triton backend; default: the current backend).

  Returns:
    (out float32[B, T, Hkv, G, D], lse float32[B, T, Hkv, G]).
  """
  b, t, hkv, g, d = q.shape
  if k.shape != (b, t, hkv, d) or v.shape != k.shape:
    raise ValueError(f"k and v must be [B, T, Hkv, D] = {(b, t, hkv, d)}, got {k.shape} and {v.shape}")
  scale = d ** -0.5 if scale is None else scale
  bq, bk = min(config.block_q, t), min(config.block_k, t)
  blk = max(bq, bk)  # both powers of two (or t itself): the larger is a multiple of the smaller
  qh = pad_to_multiple(q.reshape(b, t, hkv * g, d).transpose(0, 2, 1, 3), 2, blk)  # [B, H, Tp, D]
  kh = pad_to_multiple(k.transpose(0, 2, 1, 3), 2, blk)  # [B, Hkv, Tp, D]
  vh = pad_to_multiple(v.transpose(0, 2, 1, 3), 2, blk)
  tp = qh.shape[2]
  bq, bk = (bq, bk) if tp % bq == 0 and tp % bk == 0 else (blk, blk)
  kernel = functools.partial(_kernel, scale=scale, block_q=bq, block_k=bk)
  out, lse = pl.pallas_call(
      kernel,
      grid=(b, hkv * g, tp // bq),
      in_specs=[
          pl.BlockSpec((b,), lambda i, h, j: (0,)),  # all lengths (tiny)
          pl.BlockSpec((None, None, bq, d), lambda i, h, j: (i, h, j, 0)),
          pl.BlockSpec((None, None, tp, d), lambda i, h, j: (i, h // g, 0, 0)),
          pl.BlockSpec((None, None, tp, d), lambda i, h, j: (i, h // g, 0, 0)),
      ],
      out_specs=[pl.BlockSpec((None, None, bq, d), lambda i, h, j: (i, h, j, 0)),
                 pl.BlockSpec((None, None, bq), lambda i, h, j: (i, h, j))],
      out_shape=[jax.ShapeDtypeStruct((b, hkv * g, tp, d), jnp.float32),
                 jax.ShapeDtypeStruct((b, hkv * g, tp), jnp.float32)],
      interpret=interpret,
      compiler_params=_compiler_params(platform),
  )(lengths.astype(jnp.int32), qh, kh, vh)
  out = out[:, :, :t].transpose(0, 2, 1, 3).reshape(b, t, hkv, g, d)
  lse = lse[:, :, :t].transpose(0, 2, 1).reshape(b, t, hkv, g)
  return out, lse
