"""Shared-prefix ("cascade") decode attention for particles (Pallas).

N particles of a prompt decode one token each. Phase 1 runs one program per
(prompt, KV head): the queries of all N particles and all G query heads of that KV
head ([N * G, D]) attend over the prompt's KV in one blocked online softmax, so the
prompt KV is read once per prompt, not once per particle. Phase 2 runs one program
per (prompt, particle, KV head): it resumes the online softmax from phase 1's
residuals (running max m, sum l, output) and continues over the particle's own
suffix KV, which merges the two by log-sum-exp exactly. Both phases read the
caches in their native layouts (no transposes).

    out, m, l = cascade_decode(q, prefix_k, prefix_v, prefix_lengths, suffix_k, suffix_v, suffix_mask)
    out, m, l = cascade_decode_reference(...)  # pure jnp, same contract

Shapes: q [B, N, Hkv, G, D]; prefix_k / prefix_v [B, Tp, Hkv, D]; prefix_lengths
int32[B]; suffix_k / suffix_v [B, N, Ts, Hkv, D]; suffix_mask bool[B, N, Ts].
Returns out float32[B, N, Hkv, G, D] and the residuals m, l float32[B, N, Hkv, G]
(log-sum-exp = m + log l; l = 0 where a query sees no key).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from tts_jax.kernels.blocks import check_powers_of_two, pad_to_multiple
from tts_jax.kernels.dispatch import compiler_params as _compiler_params
from tts_jax.kernels.reference import attend_partial, merge_partials


@dataclasses.dataclass(frozen=True)
class CascadeConfig:
  """block_prefix: prompt keys per inner step; block_suffix: suffix keys per inner step."""

  block_prefix: int = 128
  block_suffix: int = 64

  def __post_init__(self):
    check_powers_of_two(self)


def cascade_decode_reference(q, prefix_k, prefix_v, prefix_lengths, suffix_k, suffix_v, suffix_mask,
                             scale: float | None = None):
  """Pure jnp: `attend_partial` over the prefix and over each suffix, merged by log-sum-exp."""
  b, n, hkv, g, d = q.shape
  scale = d ** -0.5 if scale is None else scale
  tp = prefix_k.shape[1]
  pmask = jnp.broadcast_to((jnp.arange(tp)[None, :] < prefix_lengths[:, None])[:, None, :], (b, n, tp))
  o_p, lse_p = attend_partial(q, prefix_k, prefix_v, pmask, scale)
  ts = suffix_k.shape[2]
  o_s, lse_s = attend_partial(q.reshape(b * n, 1, hkv, g, d), suffix_k.reshape(b * n, ts, hkv, d),
                              suffix_v.reshape(b * n, ts, hkv, d), suffix_mask.reshape(b * n, 1, ts), scale)
  o, lse = merge_partials(o_p, lse_p, o_s.reshape(b, n, hkv, g, d), lse_s.reshape(b, n, hkv, g))
  m = jnp.where(jnp.isfinite(lse), lse, -jnp.inf)
  return o, m, jnp.where(jnp.isfinite(lse), 1.0, 0.0)  # residuals normalised to m = lse, l = 1


def _online(q, k, v, valid, carry):
  """One online-softmax step. q [R, D] (scaled), k / v [bk, D], valid bool[R or 1, bk]."""
  m, l, acc = carry
  s = jnp.dot(q, k.T, preferred_element_type=jnp.float32)
  s = jnp.where(valid, s, -jnp.inf)
  m_new = jnp.maximum(m, jnp.max(s, axis=-1))
  safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
  p = jnp.exp(s - safe[:, None])
  alpha = jnp.exp(m - safe)
  return m_new, alpha * l + jnp.sum(p, axis=-1), alpha[:, None] * acc + jnp.dot(p, v, preferred_element_type=jnp.float32)


def _prefix_kernel(len_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *, scale, block):
  b = pl.program_id(0)
  length = len_ref[b]
  n, g, d = q_ref.shape
  q = q_ref[...].astype(jnp.float32).reshape(n * g, d) * scale

  def body(j, carry):
    start = pl.multiple_of(j * block, block)
    k = k_ref[pl.ds(start, block), :].astype(jnp.float32)
    v = v_ref[pl.ds(start, block), :].astype(jnp.float32)
    valid = (start + jnp.arange(block) < length)[None, :]
    return _online(q, k, v, valid, carry)

  init = (jnp.full((n * g,), -jnp.inf, jnp.float32), jnp.zeros((n * g,), jnp.float32),
          jnp.zeros((n * g, d), jnp.float32))
  m, l, acc = jax.lax.fori_loop(0, (length + block - 1) // block, body, init)
  o_ref[...] = (acc / jnp.where(l > 0, l, 1.0)[:, None]).reshape(n, g, d)
  m_ref[...] = m.reshape(n, g)
  l_ref[...] = l.reshape(n, g)


def _suffix_kernel(q_ref, k_ref, v_ref, mask_ref, op_ref, mp_ref, lp_ref, o_ref, m_ref, l_ref, *, scale, block):
  g, d = q_ref.shape
  q = q_ref[...].astype(jnp.float32) * scale
  mask = mask_ref[...]
  ts = mask.shape[0]
  last = jnp.max(jnp.where(mask != 0, jnp.arange(ts) + 1, 0))  # keys after the last valid slot are skipped

  def body(j, carry):
    start = pl.multiple_of(j * block, block)
    k = k_ref[pl.ds(start, block), :].astype(jnp.float32)
    v = v_ref[pl.ds(start, block), :].astype(jnp.float32)
    valid = (mask_ref[pl.ds(start, block)] != 0)[None, :]
    return _online(q, k, v, valid, carry)

  l0 = lp_ref[...]
  init = (mp_ref[...], l0, op_ref[...] * l0[:, None])  # resume from the prefix's residuals
  m, l, acc = jax.lax.fori_loop(0, (last + block - 1) // block, body, init)
  o_ref[...] = acc / jnp.where(l > 0, l, 1.0)[:, None]
  m_ref[...] = m
  l_ref[...] = l


@functools.partial(jax.jit, static_argnames=("scale", "config", "interpret", "platform"))
def prefix_attention(q, prefix_k, prefix_v, prefix_lengths, scale: float | None = None,
                     config: CascadeConfig = CascadeConfig(), interpret: bool = False, platform: str | None = None):
  """Phase 1 alone: all particles of each prompt over the shared prompt KV, read once per
  (prompt, KV head). Returns (out, m, l) as `cascade_decode` for the prefix keys only."""
  b, n, hkv, g, d = q.shape
  scale = d ** -0.5 if scale is None else scale
  blk = min(config.block_prefix, pl.next_power_of_2(prefix_k.shape[1]))
  pk, pv = pad_to_multiple(prefix_k, 1, blk), pad_to_multiple(prefix_v, 1, blk)
  tp = pk.shape[1]
  o, m, l = pl.pallas_call(
      functools.partial(_prefix_kernel, scale=scale, block=blk),
      grid=(b, hkv),
      in_specs=[pl.BlockSpec((b,), lambda i, h: (0,)),
                pl.BlockSpec((None, n, None, g, d), lambda i, h: (i, 0, h, 0, 0)),
                pl.BlockSpec((None, tp, None, d), lambda i, h: (i, 0, h, 0)),
                pl.BlockSpec((None, tp, None, d), lambda i, h: (i, 0, h, 0))],
      out_specs=[pl.BlockSpec((None, n, None, g, d), lambda i, h: (i, 0, h, 0, 0)),
                 pl.BlockSpec((None, n, None, g), lambda i, h: (i, 0, h, 0)),
                 pl.BlockSpec((None, n, None, g), lambda i, h: (i, 0, h, 0))],
      out_shape=[jax.ShapeDtypeStruct((b, n, hkv, g, d), jnp.float32),
                 jax.ShapeDtypeStruct((b, n, hkv, g), jnp.float32),
                 jax.ShapeDtypeStruct((b, n, hkv, g), jnp.float32)],
      interpret=interpret,
      compiler_params=_compiler_params(platform),
  )(prefix_lengths.astype(jnp.int32), q, pk, pv)
  return o, m, l


@functools.partial(jax.jit, static_argnames=("scale", "config", "interpret", "platform"))
def cascade_decode(q, prefix_k, prefix_v, prefix_lengths, suffix_k, suffix_v, suffix_mask,
                   scale: float | None = None, config: CascadeConfig = CascadeConfig(), interpret: bool = False,
                   platform: str | None = None):
  """Decode attention of N particles per prompt over the shared prompt KV + private suffix KV.

  See the module docstring for shapes. interpret: run in Pallas interpret mode (CPU).
  platform: the lowering target ("gpu" selects the Triton backend; default: the current backend).
  """
  b, n, hkv, g, d = q.shape
  if prefix_k.shape[0] != b or prefix_k.shape[2:] != (hkv, d) or suffix_k.shape[:2] != (b, n) \
      or suffix_k.shape[3:] != (hkv, d) or suffix_mask.shape != suffix_k.shape[:3]:
    raise ValueError(f"shape mismatch: q {q.shape}, prefix_k {prefix_k.shape}, suffix_k {suffix_k.shape}, "
                     f"suffix_mask {suffix_mask.shape}")
  scale = d ** -0.5 if scale is None else scale
  o_p, m_p, l_p = prefix_attention(q, prefix_k, prefix_v, prefix_lengths, scale, config, interpret, platform)
  blk = min(config.block_suffix, pl.next_power_of_2(suffix_k.shape[2]))
  sk, sv = pad_to_multiple(suffix_k, 2, blk), pad_to_multiple(suffix_v, 2, blk)
  mask = pad_to_multiple(suffix_mask.astype(jnp.int32), 2, blk)
  ts = sk.shape[2]
  row = lambda i, j, h: (i, j, h, 0)
  return pl.pallas_call(
      functools.partial(_suffix_kernel, scale=scale, block=blk),
      grid=(b, n, hkv),
      in_specs=[pl.BlockSpec((None, None, None, g, d), lambda i, j, h: (i, j, h, 0, 0)),
                pl.BlockSpec((None, None, ts, None, d), lambda i, j, h: (i, j, 0, h, 0)),
                pl.BlockSpec((None, None, ts, None, d), lambda i, j, h: (i, j, 0, h, 0)),
                pl.BlockSpec((None, None, ts), lambda i, j, h: (i, j, 0)),
                pl.BlockSpec((None, None, None, g, d), lambda i, j, h: (i, j, h, 0, 0)),
                pl.BlockSpec((None, None, None, g), row),
                pl.BlockSpec((None, None, None, g), row)],
      out_specs=[pl.BlockSpec((None, None, None, g, d), lambda i, j, h: (i, j, h, 0, 0)),
                 pl.BlockSpec((None, None, None, g), row),
                 pl.BlockSpec((None, None, None, g), row)],
      out_shape=[jax.ShapeDtypeStruct((b, n, hkv, g, d), jnp.float32),
                 jax.ShapeDtypeStruct((b, n, hkv, g), jnp.float32),
                 jax.ShapeDtypeStruct((b, n, hkv, g), jnp.float32)],
      interpret=interpret,
      compiler_params=_compiler_params(platform),
  )(q, sk, sv, mask, o_p, m_p, l_p)
