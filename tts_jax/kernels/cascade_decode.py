"""Shared-prefix ("cascade") decode attention for particles (Pallas).

N particles of a prompt decode one token each. Phase 1 attends the queries of all N
particles and all G query heads of a KV head (the N * G "rows") over the prompt's KV,
so the prompt KV is read once per prompt, not once per particle. The rows are cut in
tiles that fit on chip, and the prompt is split into chunks processed by parallel
programs (flash-decoding) whose partial softmaxes are merged by log-sum-exp, so a single
long prompt still fills the device: grid (prompt, KV head, row tile, chunk). Phase 2
runs one program per (prompt, particle, KV head): it resumes the online softmax from
phase 1's merged residuals and continues over the particle's own suffix KV, which merges
the two exactly. `tts_jax.kernels.plan` picks the tiles and padding per backend.

    out, m, l = cascade_decode(q, prefix_k, prefix_v, prefix_lengths, suffix_k, suffix_v, suffix_mask)
    out, m, l = cascade_decode_reference(...)  # pure jnp, same contract

Shapes: q [B, N, Hkv, G, D]; prefix_k / prefix_v [B, Hkv, Tp, D]; prefix_lengths
int32[B]; suffix_k / suffix_v [B, N, Hkv, Ts, D]; suffix_mask bool[B, N, Ts].
Returns out float32[B, N, Hkv, G, D] and the residuals m, l float32[B, N, Hkv, G]
(log-sum-exp = m + log l; l = 0 where a query sees no key). Any N, G, D, Tp, Ts >= 1.

Layouts: the caches are head-major (`tts_jax.kernels.reference`), so a block is one (KV head,
key range) slab whose last two dims are (keys, D), as Mosaic requires on TPU and as Triton
reads it on GPU: no copies when Tp and Ts are multiples of the key block, which
`LanguageModel` keeps them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from tts_jax.kernels.blocks import kv_spec, online_softmax_step, pad_axis, scalar_spec
from tts_jax.kernels.dispatch import compiler_params
from tts_jax.kernels.plan import DecodePlan, Target, plan_decode, target_for
from tts_jax.kernels.reference import attend_partial, merge_partials


def cascade_decode_reference(q, prefix_k, prefix_v, prefix_lengths, suffix_k, suffix_v, suffix_mask,
                             scale: float | None = None):
  """Pure jnp: `attend_partial` over the prefix and over each suffix, merged by log-sum-exp."""
  b, n, hkv, g, d = q.shape
  scale = d ** -0.5 if scale is None else scale
  tp = prefix_k.shape[2]
  pmask = jnp.broadcast_to((jnp.arange(tp)[None, :] < prefix_lengths[:, None])[:, None, :], (b, n, tp))
  o_p, lse_p = attend_partial(q, prefix_k, prefix_v, pmask, scale)
  ts = suffix_k.shape[3]
  o_s, lse_s = attend_partial(q.reshape(b * n, 1, hkv, g, d), suffix_k.reshape(b * n, hkv, ts, d),
                              suffix_v.reshape(b * n, hkv, ts, d), suffix_mask.reshape(b * n, 1, ts), scale)
  o, lse = merge_partials(o_p, lse_p, o_s.reshape(b, n, hkv, g, d), lse_s.reshape(b, n, hkv, g))
  m = jnp.where(jnp.isfinite(lse), lse, -jnp.inf)
  return o, m, jnp.where(jnp.isfinite(lse), 1.0, 0.0)  # residuals normalised to m = lse, l = 1


def _prefix_kernel(len_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *, scale, block, chunk):
  """One (prompt, KV head, row tile, chunk): rows [R, D] over the chunk's valid keys."""
  b, s = pl.program_id(0), pl.program_id(3)
  start = s * chunk
  valid_keys = jnp.clip(len_ref[b] - start, 0, chunk)
  q = q_ref[...]
  rows, d = q.shape

  def body(j, carry):
    at = pl.multiple_of(j * block, block)
    valid = jax.lax.broadcasted_iota(jnp.int32, (1, block), 1) + at < valid_keys
    return online_softmax_step(q, k_ref[pl.ds(at, block), :], v_ref[pl.ds(at, block), :], valid, scale, carry)

  init = (jnp.full((rows, 1), -jnp.inf, jnp.float32), jnp.zeros((rows, 1), jnp.float32),
          jnp.zeros((rows, d), jnp.float32))
  m, l, acc = jax.lax.fori_loop(0, (valid_keys + block - 1) // block, body, init)
  o_ref[...] = acc / jnp.where(l > 0, l, 1.0)
  m_ref[...] = m
  l_ref[...] = l


def _suffix_kernel(last_ref, q_ref, k_ref, v_ref, mask_ref, op_ref, mp_ref, lp_ref, o_ref, m_ref, l_ref, *,
                   scale, block):
  """One (prompt, particle, KV head): resume from the prefix residuals over the suffix."""
  last = last_ref[pl.program_id(0), pl.program_id(1)]  # keys after the last valid slot are skipped

  def body(j, carry):
    at = pl.multiple_of(j * block, block)
    valid = mask_ref[:, pl.ds(at, block)] != 0
    return online_softmax_step(q_ref[...], k_ref[pl.ds(at, block), :], v_ref[pl.ds(at, block), :], valid, scale,
                               carry)

  l0 = lp_ref[...]
  init = (mp_ref[...], l0, op_ref[...] * l0)
  m, l, acc = jax.lax.fori_loop(0, (last + block - 1) // block, body, init)
  o_ref[...] = acc / jnp.where(l > 0, l, 1.0)
  m_ref[...] = m
  l_ref[...] = l


def _partial_shapes(rows: tuple[int, ...], d: int) -> list[jax.ShapeDtypeStruct]:
  """float32 (out [*rows, D], m [*rows, 1], l [*rows, 1]) of a partial softmax."""
  return [jax.ShapeDtypeStruct(rows + (d,), jnp.float32)] + [jax.ShapeDtypeStruct(rows + (1,), jnp.float32)] * 2


def _merge_chunks(o, m, l):
  """Log-sum-exp merge over axis 2 (chunks) of o [B, H, S, R, D], m / l [B, H, S, R, 1]."""
  m_all = jnp.max(m, axis=2, keepdims=True)
  safe = jnp.where(jnp.isfinite(m_all), m_all, 0.0)
  w = jnp.where(l > 0, l * jnp.exp(m - safe), 0.0)
  l_all = jnp.sum(w, axis=2)
  o_all = jnp.sum(o * w, axis=2) / jnp.where(l_all > 0, l_all, 1.0)
  return o_all, m_all[:, :, 0], l_all


def _prefix_phase(q_rows, prefix_k, prefix_v, lengths, plan: DecodePlan, scale, interpret, platform):
  """q_rows [B, Hkv, R, D'] (padded) over the prompt KV -> merged (o, m, l) over chunks."""
  b, hkv, r, d = q_rows.shape
  tpu = plan.target.name == "tpu"
  pk, pv = (pad_axis(pad_axis(x, 2, plan.prompt_len), 3, d) for x in (prefix_k, prefix_v))
  kv = kv_spec((None, None, plan.chunk, d), lambda i, h, t, s: (i, h, s, 0), tpu)  # one (KV head, chunk) slab
  splits, tiles = plan.splits, r // plan.rows
  out_block = lambda last: pl.BlockSpec((None, None, None, plan.rows, last), lambda i, h, t, s: (i, h, s, t, 0))
  o, m, l = pl.pallas_call(
      functools.partial(_prefix_kernel, scale=scale, block=plan.block_prefix, chunk=plan.chunk),
      grid=(b, hkv, tiles, splits),
      in_specs=[scalar_spec(lengths.shape, tpu),
                pl.BlockSpec((None, None, plan.rows, d), lambda i, h, t, s: (i, h, t, 0)),
                kv, kv],
      out_specs=[out_block(d), out_block(1), out_block(1)],
      out_shape=_partial_shapes((b, hkv, splits, r), d),
      interpret=interpret,
      compiler_params=compiler_params(platform, plan.prefix_bytes()),
  )(lengths, q_rows, pk, pv)
  return _merge_chunks(o, m, l)


def _rows(q, plan: DecodePlan):
  """q [B, N, Hkv, G, D] -> [B, Hkv, R, D'] with rows (particle, head) padded to the plan."""
  b, n, hkv, g, d = q.shape
  x = q.transpose(0, 2, 1, 3, 4).reshape(b, hkv, n * g, d)
  return pad_axis(pad_axis(x, 2, plan.num_rows), 3, plan.head_dim)


@functools.partial(jax.jit, static_argnames=("scale", "interpret", "platform", "target"))
def prefix_attention(q, prefix_k, prefix_v, prefix_lengths, scale: float | None = None, interpret: bool = False,
                     platform: str | None = None, target: Target | None = None):
  """Phase 1 alone: all particles of each prompt over the shared prompt KV, read once per
  (prompt, KV head). Returns (out, m, l) as `cascade_decode` for the prefix keys only."""
  b, n, hkv, g, d = q.shape
  scale = d ** -0.5 if scale is None else scale
  plan = _plan(q, prefix_k.shape[2], 1, platform, target)
  o, m, l = _prefix_phase(_rows(q, plan), prefix_k, prefix_v, prefix_lengths.astype(jnp.int32), plan, scale,
                          interpret, platform)
  unrow = lambda x: x[:, :, :n * g].reshape(b, hkv, n, g, -1).transpose(0, 2, 1, 3, 4)
  return unrow(o)[..., :d], unrow(m)[..., 0], unrow(l)[..., 0]


def _plan(q, tp, ts, platform, target) -> DecodePlan:
  b, n, hkv, g, d = q.shape
  return plan_decode(num_rows=n * g, prompt_len=tp, suffix_len=ts, groups=g, head_dim=d, dtype=q.dtype, batch=b,
                     kv_heads=hkv, target=target or target_for(platform or jax.default_backend()))


@functools.partial(jax.jit, static_argnames=("scale", "interpret", "platform", "target"))
def cascade_decode(q, prefix_k, prefix_v, prefix_lengths, suffix_k, suffix_v, suffix_mask,
                   scale: float | None = None, interpret: bool = False, platform: str | None = None,
                   target: Target | None = None):
  """Decode attention of N particles per prompt over the shared prompt KV + private suffix KV.

  See the module docstring for shapes. interpret: run in Pallas interpret mode (CPU).
  platform: the lowering target ("gpu"/"cuda": Triton, "tpu": Mosaic; default: the current
  backend, whose plan CPU interpret mode shares with GPU). target: a `Target` overriding the
  platform's tiling (tests use small tiles to exercise several row tiles and chunks). Raises
  `tts_jax.kernels.UnsupportedShape` when no tiling fits the target.
  """
  b, n, hkv, g, d = q.shape
  if prefix_k.shape[0] != b or prefix_k.shape[1] != hkv or prefix_k.shape[3] != d \
      or suffix_k.shape[:3] != (b, n, hkv) or suffix_k.shape[4] != d \
      or suffix_mask.shape != (b, n, suffix_k.shape[3]) \
      or prefix_v.shape != prefix_k.shape or suffix_v.shape != suffix_k.shape:
    raise ValueError(f"shape mismatch: q {q.shape}, prefix_k {prefix_k.shape}, prefix_v {prefix_v.shape}, "
                     f"suffix_k {suffix_k.shape}, suffix_v {suffix_v.shape}, suffix_mask {suffix_mask.shape}")
  scale = d ** -0.5 if scale is None else scale
  plan = _plan(q, prefix_k.shape[2], suffix_k.shape[3], platform, target)
  dp, gp, ts = plan.head_dim, plan.groups, plan.suffix_len
  o_p, m_p, l_p = _prefix_phase(_rows(q, plan), prefix_k, prefix_v, prefix_lengths.astype(jnp.int32), plan, scale,
                                interpret, platform)
  # Back to per-particle rows [B, N, Hkv, G', .] for phase 2.
  per_particle = lambda x: pad_axis(x[:, :, :n * g].reshape(b, hkv, n, g, -1).transpose(0, 2, 1, 3, 4), 3, gp)
  o_p, m_p, l_p = per_particle(o_p), per_particle(m_p), per_particle(l_p)
  qg = pad_axis(pad_axis(q, 3, gp), 4, dp)
  sk, sv = (pad_axis(pad_axis(x, 3, ts), 4, dp) for x in (suffix_k, suffix_v))
  mask = pad_axis(suffix_mask.astype(jnp.int32), 2, ts)[:, :, None, :]  # [B, N, 1, Ts]
  last = jnp.max(jnp.where(suffix_mask, jnp.arange(suffix_mask.shape[2]) + 1, 0), axis=2).astype(jnp.int32)
  tpu = plan.target.name == "tpu"
  kv = kv_spec((None, None, None, ts, dp), lambda i, j, h: (i, j, h, 0, 0), tpu)
  head = lambda last_dim: pl.BlockSpec((None, None, None, gp, last_dim), lambda i, j, h: (i, j, h, 0, 0))
  o, m, l = pl.pallas_call(
      functools.partial(_suffix_kernel, scale=scale, block=plan.block_suffix),
      grid=(b, n, hkv),
      in_specs=[scalar_spec(last.shape, tpu), head(dp), kv, kv,
                pl.BlockSpec((None, None, 1, ts), lambda i, j, h: (i, j, 0, 0)),
                head(dp), head(1), head(1)],
      out_specs=[head(dp), head(1), head(1)],
      out_shape=_partial_shapes((b, n, hkv, gp), dp),
      interpret=interpret,
      compiler_params=compiler_params(platform, plan.suffix_bytes()),
  )(last, qg, sk, sv, mask, o_p, m_p, l_p)
  return o[:, :, :, :g, :d], m[:, :, :, :g, 0], l[:, :, :, :g, 0]
