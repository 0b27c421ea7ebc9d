"""Causal flash attention for prefill (Pallas): blocked online softmax, GQA, ragged lengths.

One program per (batch row, query head, query block) keeps a running max m, sum l and
output accumulator over the key blocks it may see (up to the causal diagonal and the
row's length), so the [T, T] score matrix never exists. Sequences are right-padded:
row b holds `lengths[b]` real tokens; outputs past them are meaningless (zeros here).
Any length, head dim (64, 80, 96, 128, 256, ...) and G: `tts_jax.kernels.plan` pads them
to what the backend needs and picks block sizes that fit on chip.

    out, lse = flash_prefill(q, k, v, lengths)          # Pallas (interpret=True on CPU)
    out, lse = flash_prefill_reference(q, k, v, lengths) # pure jnp, same contract

Shapes follow `tts_jax.kernels.reference`: q [B, T, Hkv, G, D], k / v [B, Hkv, T, D] (head-major);
out float32[B, T, Hkv, G, D], lse float32[B, T, Hkv, G].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from tts_jax.kernels.blocks import kv_spec, online_softmax_step, pad_axis, scalar_spec
from tts_jax.kernels.dispatch import compiler_params
from tts_jax.kernels.plan import Target, plan_prefill, target_for
from tts_jax.kernels.reference import attend_partial, causal_mask


def flash_prefill_reference(q, k, v, lengths, scale: float | None = None):
  """Pure-jnp causal attention with the kernel's contract (see module docstring)."""
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  return attend_partial(q, k, v, causal_mask(lengths, q.shape[1]), scale)


def _kernel(len_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, scale, block_q, block_k):
  b, i = pl.program_id(0), pl.program_id(2)
  length = len_ref[b]
  q = q_ref[...]
  q_pos = i * block_q + jax.lax.broadcasted_iota(jnp.int32, (block_q, block_k), 0)
  # Key blocks up to the causal diagonal of this query block and the row's length.
  last = jnp.minimum((i + 1) * block_q, length)

  def body(j, carry):
    start = pl.multiple_of(j * block_k, block_k)
    k_pos = start + jax.lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
    valid = (k_pos <= q_pos) & (k_pos < length)
    return online_softmax_step(q, k_ref[pl.ds(start, block_k), :], v_ref[pl.ds(start, block_k), :], valid, scale,
                               carry)

  init = (jnp.full((block_q, 1), -jnp.inf, jnp.float32), jnp.zeros((block_q, 1), jnp.float32),
          jnp.zeros(q.shape, jnp.float32))
  m, l, acc = jax.lax.fori_loop(0, (last + block_k - 1) // block_k, body, init)
  ok = l > 0
  o_ref[...] = acc / jnp.where(ok, l, 1.0)
  lse_ref[...] = jnp.where(ok, jnp.log(jnp.where(ok, l, 1.0)) + m, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("scale", "interpret", "platform", "target"))
def flash_prefill(q, k, v, lengths, scale: float | None = None, interpret: bool = False, platform: str | None = None,
                  target: Target | None = None):
  """Causal flash attention over right-padded rows.

  Args:
    q: [B, T, Hkv, G, D]; k, v: [B, Hkv, T, D] (head-major); lengths: int32[B] real tokens per row.
    scale: q.k multiplier (default D ** -0.5).
    interpret: run the Pallas kernel in interpret mode (required on CPU).
    platform: the lowering target ("gpu"/"cuda": Triton, "tpu": Mosaic; default: the
      current backend, whose plan CPU interpret mode shares with GPU).
    target: a `Target` overriding the platform's tiling (tests: small tiles).

  Returns:
    (out float32[B, T, Hkv, G, D], lse float32[B, T, Hkv, G]).

  Raises:
    `tts_jax.kernels.UnsupportedShape` when no tiling fits the target.
  """
  b, t, hkv, g, d = q.shape
  if k.shape != (b, hkv, t, d) or v.shape != k.shape:
    raise ValueError(f"k and v must be [B, Hkv, T, D] = {(b, hkv, t, d)}, got {k.shape} and {v.shape}")
  scale = d ** -0.5 if scale is None else scale
  target = target or target_for(platform or jax.default_backend())
  plan = plan_prefill(t, d, q.dtype, target)
  tp, dp, bq = plan.seq_len, plan.head_dim, plan.block_q
  pad = lambda x: pad_axis(pad_axis(x, 2, tp), 3, dp)  # noqa: E731
  qh = pad(q.reshape(b, t, hkv * g, d).transpose(0, 2, 1, 3))  # [B, H, Tp, D']
  kh, vh = pad(k), pad(v)  # [B, Hkv, Tp, D']
  # The head's whole K and V: a pointer on GPU; on TPU one VMEM buffer each (its block only
  # changes with the head, so double-buffering would just double the VMEM).
  kv = kv_spec((None, None, tp, dp), lambda i, h, j: (i, h // g, 0, 0), target.name == "tpu")
  out, lse = pl.pallas_call(
      functools.partial(_kernel, scale=scale, block_q=bq, block_k=plan.block_k),
      grid=(b, hkv * g, tp // bq),
      in_specs=[
          scalar_spec(lengths.shape, target.name == "tpu"),
          pl.BlockSpec((None, None, bq, dp), lambda i, h, j: (i, h, j, 0)),
          kv, kv,
      ],
      out_specs=[pl.BlockSpec((None, None, bq, dp), lambda i, h, j: (i, h, j, 0)),
                 pl.BlockSpec((None, None, bq, 1), lambda i, h, j: (i, h, j, 0))],
      out_shape=[jax.ShapeDtypeStruct((b, hkv * g, tp, dp), jnp.float32),
                 jax.ShapeDtypeStruct((b, hkv * g, tp, 1), jnp.float32)],
      interpret=interpret,
      compiler_params=compiler_params(platform, plan.onchip_bytes()),
  )(lengths.astype(jnp.int32), qh, kh, vh)
  out = out[:, :, :t, :d].transpose(0, 2, 1, 3).reshape(b, t, hkv, g, d)
  lse = lse[:, :, :t, 0].transpose(0, 2, 1).reshape(b, t, hkv, g)
  return out, lse
