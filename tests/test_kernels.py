"""Pallas kernels: interpret mode on CPU against their references and jax.nn.dot_product_attention,
their tilings against the H100 / TPU on-chip limits, and their lowering for CUDA and TPU."""

import dataclasses
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from tts_jax.kernels import (H100, TPU, UnsupportedShape, attention_path, cascade_decode, cascade_decode_reference,
                             flash_prefill, flash_prefill_reference, heads_major, plan_decode, plan_prefill)
from tts_jax.kernels.dispatch import MEASURED_FASTER, lowering_platform
from tts_jax.kernels.plan import _program_bytes
from tts_jax.models import init, qwen2_config

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}
# Small tiles so that tiny test shapes still run several row tiles, prompt chunks and key blocks.
TINY = dataclasses.replace(H100, row_tiles=(16,), key_blocks=(16,), programs=64)


def _rand(key, shape, dtype):
  return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def _is_pow2(x):
  return x >= 1 and not x & (x - 1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("d,hkv,g,t,lengths,target", [
    (64, 2, 1, 37, (37, 20, 1), TINY),     # MHA, T not a multiple of the blocks, several q and k blocks
    (80, 1, 6, 50, (50, 33, 7), None),     # Qwen2.5-1.5B-style G=6, head dim 80 (padded to 128)
    (96, 2, 3, 24, (24, 5, 17), TINY),     # G=3, head dim 96
    (256, 1, 7, 19, (19, 2, 11), None),    # G=7, head dim 256
])
def test_flash_prefill(dtype, d, hkv, g, t, lengths, target):
  b = len(lengths)
  ks = jax.random.split(jax.random.key(t + d), 3)
  q, k, v = _rand(ks[0], (b, t, hkv, g, d), dtype), _rand(ks[1], (b, t, hkv, d), dtype), _rand(ks[2], (b, t, hkv, d), dtype)
  lens = jnp.asarray(lengths, jnp.int32)
  out, lse = flash_prefill(q, heads_major(k), heads_major(v), lens, interpret=True, target=target)
  ref, ref_lse = flash_prefill_reference(q, heads_major(k), heads_major(v), lens)
  valid = np.arange(t)[None, :] < np.asarray(lens)[:, None]
  np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref)[valid], atol=TOL[dtype], rtol=TOL[dtype])
  np.testing.assert_allclose(np.asarray(lse)[valid], np.asarray(ref_lse)[valid], atol=TOL[dtype], rtol=TOL[dtype])
  # jax.nn.dot_product_attention with GQA, causal masking and per-row lengths.
  peer = jax.nn.dot_product_attention(q.reshape(b, t, hkv * g, d), k, v, is_causal=True,
                                      query_seq_lengths=lens, key_value_seq_lengths=lens)
  np.testing.assert_allclose(np.asarray(out.reshape(b, t, hkv * g, d))[valid],
                             np.asarray(peer, np.float32)[valid], atol=2 * TOL[dtype], rtol=2 * TOL[dtype])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("d,hkv,g,n,tp,ts,plens,target", [
    (64, 2, 3, 5, 45, 19, (45, 7), TINY),     # N=5, G=3: 15 rows; 3 prompt chunks; 2 suffix blocks
    (80, 1, 6, 3, 70, 12, (1, 70), TINY),     # G=6, D=80: two row tiles, 5 chunks, a 1-token prompt
    (128, 1, 7, 1, 33, 5, (33,), None),       # N=1, G=7
    (96, 2, 1, 9, 130, 70, (130, 64), None),  # MHA, N=9, D=96
])
def test_cascade_decode(dtype, d, hkv, g, n, tp, ts, plens, target):
  b = len(plens)
  ks = jax.random.split(jax.random.key(tp + ts), 6)
  q = _rand(ks[0], (b, n, hkv, g, d), dtype)
  pk, pv = _rand(ks[1], (b, tp, hkv, d), dtype), _rand(ks[2], (b, tp, hkv, d), dtype)
  sk, sv = _rand(ks[3], (b, n, ts, hkv, d), dtype), _rand(ks[4], (b, n, ts, hkv, d), dtype)
  mask = jax.random.bernoulli(ks[5], 0.6, (b, n, ts)).at[0, 0].set(False)  # one particle with an empty suffix
  plen = jnp.asarray(plens, jnp.int32)
  cache = [heads_major(x) for x in (pk, pv, sk, sv)]  # the caches' layout; the peer below reads token-major
  out, m, l = cascade_decode(q, *cache[:2], plen, *cache[2:], mask, interpret=True, target=target)
  ref, rm, rl = cascade_decode_reference(q, *cache[:2], plen, *cache[2:], mask)
  tol = TOL[dtype]
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=tol, rtol=tol)
  np.testing.assert_allclose(np.asarray(m + jnp.log(l)), np.asarray(rm + jnp.log(rl)), atol=tol, rtol=tol)
  # Peer: one dense attention per particle over [its prompt's valid keys, its valid suffix keys].
  keys = jnp.concatenate([jnp.broadcast_to(pk[:, None], (b, n, tp, hkv, d)), sk], axis=2).reshape(b * n, tp + ts, hkv, d)
  vals = jnp.concatenate([jnp.broadcast_to(pv[:, None], (b, n, tp, hkv, d)), sv], axis=2).reshape(b * n, tp + ts, hkv, d)
  allowed = jnp.concatenate([jnp.broadcast_to((jnp.arange(tp)[None, :] < plen[:, None])[:, None], (b, n, tp)), mask],
                            axis=2).reshape(b * n, 1, 1, tp + ts)
  peer = jax.nn.dot_product_attention(q.reshape(b * n, 1, hkv * g, d), keys, vals, mask=allowed)
  np.testing.assert_allclose(np.asarray(out).reshape(b * n, 1, hkv * g, d), np.asarray(peer, np.float32),
                             atol=2 * tol, rtol=2 * tol)


def test_tiny_target_really_splits():
  """The TINY cases above exercise what they claim: several row tiles and prompt chunks."""
  plan = plan_decode(num_rows=18, prompt_len=70, suffix_len=12, groups=6, head_dim=80, dtype=jnp.float32, batch=2,
                     target=TINY)
  assert plan.num_rows // plan.rows == 2 and plan.splits == 5 and plan.head_dim == 128 and plan.groups == 8
  assert plan_decode(num_rows=15, prompt_len=45, suffix_len=19, groups=3, head_dim=64, dtype=jnp.float32, batch=2,
                     kv_heads=2, target=TINY).splits == 3


SHAPES = list(itertools.product((1, 3, 5, 16, 64, 256), (1, 2, 3, 4, 6, 7, 8, 16), (64, 80, 96, 128, 256),
                                (jnp.bfloat16, jnp.float32)))


def test_every_shape_class_fits_the_h100_and_the_tpu():
  """Each kernel configuration's on-chip bytes against the H100's 227 KiB of shared memory
  per block (and the TPU VMEM budget), with every in-kernel array a power of two on GPU."""
  for n, g, d, dtype in SHAPES:
    for tp in (7, 1024, 4096, 16384):
      p = plan_decode(num_rows=n * g, prompt_len=tp, suffix_len=256, groups=g, head_dim=d, dtype=dtype, target=H100)
      assert p.onchip_bytes() <= 227 * 1024, (n, g, d, dtype, tp, p)
      assert all(map(_is_pow2, (p.rows, p.head_dim, p.block_prefix, p.groups, p.block_suffix))), p
      assert p.num_rows >= n * g and p.head_dim >= d and p.prompt_len >= tp and p.prompt_len % p.chunk == 0
      if tp >= 4096:
        assert p.splits * (p.num_rows // p.rows) >= 8  # one long prompt still spreads over the SMs
      t = plan_decode(num_rows=n * g, prompt_len=tp, suffix_len=256, groups=g, head_dim=d, dtype=dtype, target=TPU)
      assert t.onchip_bytes() <= TPU.onchip_bytes and t.head_dim % 128 == 0 and t.rows % 8 == 0
  for t, d, dtype in itertools.product((1, 7, 1000, 4096, 16384), (64, 80, 96, 128, 256), (jnp.bfloat16, jnp.float32)):
    p = plan_prefill(t, d, dtype, H100)
    assert p.onchip_bytes() <= 227 * 1024 and _is_pow2(p.block_q) and _is_pow2(p.block_k) and _is_pow2(p.head_dim)
    assert plan_prefill(t, d, dtype, TPU).onchip_bytes() <= TPU.onchip_bytes


def test_onchip_estimate_flags_the_measured_crash():
  """The old kernel (all N * G = 256 rows of N=64, G=4, D=128 in one float32 program, 128-key
  blocks) crashed on an H100 asking for more shared memory than it has: the estimate agrees."""
  assert _program_bytes(256, 128, 128, 4, H100) > 227 * 1024


def test_unsupported_shapes_name_the_constraint():
  with pytest.raises(UnsupportedShape, match="shared memory per block"):
    plan_decode(num_rows=8, prompt_len=64, suffix_len=8, groups=2, head_dim=2048, dtype=jnp.float32, target=H100)
  with pytest.raises(UnsupportedShape, match="head_dim"):
    plan_prefill(64, 4096, jnp.float32, H100)
  with pytest.raises(UnsupportedShape, match="num_rows >= 1"):
    plan_decode(num_rows=0, prompt_len=64, suffix_len=8, groups=2, head_dim=64, dtype=jnp.float32)
  cfg = qwen2_config(vocab_size=8, hidden_size=16, intermediate_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
                     head_dim=2048, attention_impl="pallas")
  lm, params = init(cfg)
  with pytest.raises(UnsupportedShape, match="2048"):
    lm.prefill(params, jnp.zeros((1, 4), jnp.int32), jnp.asarray([4]))


def test_dispatch_rule():
  with pytest.raises(ValueError, match="attention_impl"):
    qwen2_config(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
                 head_dim=8, attention_impl="triton")
  for kernel in ("prefill", "decode"):
    assert not attention_path("xla", kernel).pallas
    p = attention_path("pallas", kernel, "cpu")
    assert p.pallas and p.interpret
    assert attention_path("pallas", kernel, "gpu") == type(p)(True, False, "gpu")
    for platform in ("cpu", "gpu", "tpu"):  # "auto": Pallas only where measured faster than XLA
      assert attention_path("auto", kernel, platform).pallas == ((platform, kernel) in MEASURED_FASTER)
  with lowering_platform("cuda"):
    assert attention_path("pallas", "decode") == type(p)(True, False, "gpu")


def test_model_with_pallas_attention_matches_xla():
  """The same weights through both paths: forward, prefill and shared-prefix decode (compact cache
  too), with G=3 and head dim 24 (neither a power of two)."""
  cfg = qwen2_config(vocab_size=61, hidden_size=72, intermediate_size=96, num_layers=2, num_heads=6, num_kv_heads=2,
                     head_dim=24, max_position_embeddings=64, attention_impl="xla")
  lm_x, params = init(cfg, seed=0)
  lm_p = dataclasses.replace(lm_x, config=dataclasses.replace(cfg, attention_impl="pallas"))
  toks = jax.random.randint(jax.random.key(1), (2, 11), 0, 61)
  lens = jnp.asarray([11, 6])
  np.testing.assert_allclose(np.asarray(lm_p.forward(params, toks, lens))[:, :6],
                             np.asarray(lm_x.forward(params, toks, lens))[:, :6], atol=1e-4)
  for compact in (False, True):
    outs = []
    for lm in (lm_x, lm_p):
      first, prefix = lm.prefill(params, toks, lens)
      cache = lm.init_cache(prefix, 3, 5, compact=compact)
      step = jnp.asarray([[1, 2, 3], [4, 5, 6]])
      active = jnp.asarray([[True, False, True], [True, True, True]])
      logits = [first]
      for i in range(4):
        out, cache = lm.decode(params, step + i, cache, active=active if i % 2 else None)
        logits.append(out)
      outs.append([np.asarray(x) for x in logits])
    for a, c in zip(*outs):
      np.testing.assert_allclose(a, c, atol=1e-4)


def _args(kernel, b, n, hkv, g, d, tp, ts=64, dtype=jnp.bfloat16):
  sds = jax.ShapeDtypeStruct
  if kernel == "flash_prefill":
    return (sds((b, tp, hkv, g, d), dtype), sds((b, hkv, tp, d), dtype), sds((b, hkv, tp, d), dtype),
            sds((b,), jnp.int32))
  return (sds((b, n, hkv, g, d), dtype), sds((b, hkv, tp, d), dtype), sds((b, hkv, tp, d), dtype),
          sds((b,), jnp.int32), sds((b, n, hkv, ts, d), dtype), sds((b, n, hkv, ts, d), dtype),
          sds((b, n, ts), jnp.bool_))


KERNELS = {"flash_prefill": flash_prefill, "cascade_decode": cascade_decode}
# (B, N, Hkv, G, D, Tp): non-powers of two everywhere, N up to 256, prompts up to 16k.
LOWER_SHAPES = [(1, 5, 2, 3, 64, 1000), (2, 3, 2, 6, 128, 4096), (1, 64, 4, 4, 128, 4096),
                (1, 256, 1, 7, 80, 16384), (3, 1, 2, 8, 96, 777), (1, 16, 1, 1, 256, 2048)]


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_kernels_lower_for_cuda_with_triton(kernel):
  """Without a GPU we can still lower for CUDA: every block and in-kernel array of the shape
  classes is accepted by the Pallas Triton backend (which rejects any non-power-of-two array)."""
  for b, n, hkv, g, d, tp in LOWER_SHAPES:
    if kernel == "flash_prefill" and tp > 4096:
      tp = 4096  # same code path; keeps the test quick
    fn = lambda *x: KERNELS[kernel](*x, platform="gpu")  # noqa: B023
    exp = export.export(jax.jit(fn), platforms=["cuda"],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
                            *_args(kernel, b, n, hkv, g, d, tp))
    assert "xla.gpu.triton" in exp.mlir_module()


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_kernels_lower_for_tpu(kernel):
  """Mosaic TPU lowering on a CPU machine: an abstract mesh supplies the TPU device kind the
  lowering asks for (v5e here); blocks must end in multiples of (8, 128) or whole dims."""
  device = jax.sharding.AbstractDevice(device_kind="TPU v5e", num_cores=1, platform="tpu")
  mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
  with jax.sharding.use_abstract_mesh(mesh):
    for b, n, hkv, g, d, tp in LOWER_SHAPES[:4]:
      fn = lambda *x: KERNELS[kernel](*x, platform="tpu")  # noqa: B023
      exp = export.export(jax.jit(fn), platforms=["tpu"])(*_args(kernel, b, n, hkv, g, d, min(tp, 4096)))
      assert "tpu_custom_call" in exp.mlir_module()


def _tiny_model(attention_impl, dtype="bfloat16", **kw):
  cfg = qwen2_config(vocab_size=64, hidden_size=96, intermediate_size=64, num_layers=1, num_heads=6, num_kv_heads=1,
                     head_dim=16, max_position_embeddings=20000, attention_impl=attention_impl, dtype=dtype, **kw)
  return cfg


@pytest.mark.parametrize("attention_impl", ["pallas", "auto"])
def test_model_prefill_and_decode_lower_for_cuda(attention_impl):
  """The model's own prefill and decode exported for CUDA: G=6, N in {3, 256}, prompts of 1k and 16k."""
  from tts_jax.models.lm import abstract  # noqa: PLC0415
  lm, params = abstract(_tiny_model(attention_impl))
  sds = jax.ShapeDtypeStruct
  checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  for n, tp in ((3, 1000), (256, 16384)):
    with lowering_platform("cuda"):
      pre = export.export(jax.jit(lm.prefill), platforms=["cuda"], disabled_checks=checks)(
          params, sds((1, tp), jnp.int32), sds((1,), jnp.int32))
      prefix = jax.eval_shape(lm.prefill, params, sds((1, tp), jnp.int32), sds((1,), jnp.int32))[1]
      cache = jax.eval_shape(lambda p: lm.init_cache(p, n, 32), prefix)
      dec = export.export(jax.jit(lm.decode), platforms=["cuda"], disabled_checks=checks)(
          params, sds((1, n), jnp.int32), cache)
    for exp in (pre, dec):
      assert ("xla.gpu.triton" in exp.mlir_module()) == (attention_impl == "pallas")


@pytest.mark.parametrize("precision,expect", [("float32", "HIGHEST"), ("tensorfloat32", "HIGH")])
def test_float32_model_matmuls_are_float32_on_cuda(precision, expect):
  """TF32 is the GPU default for float32 matmuls; a float32 model asks for float32 in every dot
  of its decode step (and TF32 only when its config says so)."""
  from tts_jax.models.lm import abstract  # noqa: PLC0415
  lm, params = abstract(_tiny_model("xla", dtype="float32", matmul_precision=precision))
  sds = jax.ShapeDtypeStruct
  prefix = jax.eval_shape(lm.prefill, params, sds((1, 8), jnp.int32), sds((1,), jnp.int32))[1]
  cache = jax.eval_shape(lambda p: lm.init_cache(p, 3, 4), prefix)
  text = export.export(jax.jit(lm.decode), platforms=["cuda"])(params, sds((1, 3), jnp.int32), cache).mlir_module()
  dots = [line for line in text.splitlines() if "stablehlo.dot_general" in line]
  assert len(dots) >= 7  # q, k, v, o, gate, up, down, attention, lm head
  for line in dots:
    assert f"precision = [{expect}, {expect}]" in line, line


@pytest.mark.parametrize("t,block", [(37, 8), (64, 32), (10, 8)])
def test_block_causal_attention_equals_masked_attention(t, block):
  """`attend_causal` (query block i reads keys up to its end) gives `attend_partial`'s output
  and log-sum-exp under a causal mask with ragged lengths (T not a multiple of the block, a
  row of length 1, one block only)."""
  from tts_jax.kernels import attend_causal, attend_partial, causal_mask
  ks = jax.random.split(jax.random.key(t), 3)
  lens = jnp.asarray([t, 1, t // 2], jnp.int32)
  q, k, v = _rand(ks[0], (3, t, 2, 3, 16), jnp.float32), _rand(ks[1], (3, 2, t, 16), jnp.float32), \
      _rand(ks[2], (3, 2, t, 16), jnp.float32)
  mask = causal_mask(lens, t)
  out, lse = attend_causal(q, k, v, mask, 0.25, block=block)
  ref, ref_lse = attend_partial(q, k, v, mask, 0.25)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6, rtol=1e-6)
  np.testing.assert_array_equal(np.isfinite(np.asarray(lse)), np.isfinite(np.asarray(ref_lse)))
  fin = np.isfinite(np.asarray(ref_lse))
  np.testing.assert_allclose(np.asarray(lse)[fin], np.asarray(ref_lse)[fin], atol=1e-6, rtol=1e-6)
