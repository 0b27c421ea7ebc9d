"""Pallas kernels (interpret mode on CPU) against their references and jax.nn.dot_product_attention."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.kernels import (CascadeConfig, FlashConfig, cascade_decode, cascade_decode_reference, flash_prefill,
                             flash_prefill_reference, use_pallas)
from tts_jax.models import init, qwen2_config

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


def _rand(key, shape, dtype):
  return jax.random.normal(key, shape, jnp.float32).astype(dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("d,hkv,g,t,lengths,blocks", [
    (64, 2, 1, 37, (37, 20, 1), (16, 8)),     # MHA, T not a multiple of the blocks
    (64, 1, 4, 50, (50, 33, 7), (16, 16)),    # GQA 4:1
    (128, 2, 2, 24, (24, 5, 17), (8, 16)),    # head dim 128
    (64, 2, 3, 70, (9, 70, 64), (32, 64)),    # GQA 3:1, blocks larger than some rows
])
def test_flash_prefill(dtype, d, hkv, g, t, lengths, blocks):
  b = len(lengths)
  ks = jax.random.split(jax.random.key(t + d), 3)
  q, k, v = _rand(ks[0], (b, t, hkv, g, d), dtype), _rand(ks[1], (b, t, hkv, d), dtype), _rand(ks[2], (b, t, hkv, d), dtype)
  lens = jnp.asarray(lengths, jnp.int32)
  out, lse = flash_prefill(q, k, v, lens, config=FlashConfig(*blocks), interpret=True)
  ref, ref_lse = flash_prefill_reference(q, k, v, lens)
  valid = np.arange(t)[None, :] < np.asarray(lens)[:, None]
  np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref)[valid], atol=TOL[dtype], rtol=TOL[dtype])
  np.testing.assert_allclose(np.asarray(lse)[valid], np.asarray(ref_lse)[valid], atol=TOL[dtype], rtol=TOL[dtype])
  # jax.nn.dot_product_attention with GQA, causal masking and per-row lengths.
  peer = jax.nn.dot_product_attention(q.reshape(b, t, hkv * g, d), k, v, is_causal=True,
                                      query_seq_lengths=lens, key_value_seq_lengths=lens)
  np.testing.assert_allclose(np.asarray(out.reshape(b, t, hkv * g, d))[valid],
                             np.asarray(peer, np.float32)[valid], atol=2 * TOL[dtype], rtol=2 * TOL[dtype])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("d,hkv,g,n,tp,ts,plens,blocks", [
    (64, 2, 2, 3, 45, 19, (45, 7), (16, 8)),
    (128, 1, 4, 5, 33, 12, (1, 33), (32, 4)),
    (64, 4, 1, 2, 130, 70, (130, 64), (128, 64)),
])
def test_cascade_decode(dtype, d, hkv, g, n, tp, ts, plens, blocks):
  b = len(plens)
  ks = jax.random.split(jax.random.key(tp + ts), 6)
  q = _rand(ks[0], (b, n, hkv, g, d), dtype)
  pk, pv = _rand(ks[1], (b, tp, hkv, d), dtype), _rand(ks[2], (b, tp, hkv, d), dtype)
  sk, sv = _rand(ks[3], (b, n, ts, hkv, d), dtype), _rand(ks[4], (b, n, ts, hkv, d), dtype)
  mask = jax.random.bernoulli(ks[5], 0.6, (b, n, ts)).at[0, 0].set(False)  # one particle with an empty suffix
  plen = jnp.asarray(plens, jnp.int32)
  out, m, l = cascade_decode(q, pk, pv, plen, sk, sv, mask, config=CascadeConfig(*blocks), interpret=True)
  ref, rm, rl = cascade_decode_reference(q, pk, pv, plen, sk, sv, mask)
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


def test_block_configs_are_validated():
  with pytest.raises(ValueError, match="powers of two"):
    FlashConfig(block_q=48)
  with pytest.raises(ValueError, match="powers of two"):
    CascadeConfig(block_suffix=0)
  with pytest.raises(ValueError, match="attention_impl"):
    qwen2_config(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
                 head_dim=8, attention_impl="triton")


def test_dispatch_rule():
  assert use_pallas("xla") == (False, False)
  assert use_pallas("auto") == (jax.default_backend() in ("gpu", "tpu"), False)
  assert use_pallas("pallas") == (True, jax.default_backend() == "cpu")


def test_model_with_pallas_attention_matches_xla():
  """The same weights through both paths: forward, prefill and shared-prefix decode (compact cache too)."""
  cfg = qwen2_config(vocab_size=61, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=16, max_position_embeddings=64, attention_impl="xla")
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


@pytest.mark.parametrize("kernel", ["flash_prefill", "cascade_decode"])
def test_kernels_lower_for_gpu_with_triton(kernel):
  """Without a GPU we can still lower for CUDA: the kernels' block shapes and ops are accepted
  by the Pallas Triton backend (what runs on a GPU machine)."""
  from jax import export
  sds, bf = jax.ShapeDtypeStruct, jnp.bfloat16
  if kernel == "flash_prefill":
    args = (sds((2, 256, 2, 4, 128), bf), sds((2, 256, 2, 128), bf), sds((2, 256, 2, 128), bf), sds((2,), jnp.int32))
    fn = lambda *x: flash_prefill(*x, platform="gpu")
  else:
    args = (sds((1, 16, 2, 4, 64), bf), sds((1, 1024, 2, 64), bf), sds((1, 1024, 2, 64), bf), sds((1,), jnp.int32),
            sds((1, 16, 512, 2, 64), bf), sds((1, 16, 512, 2, 64), bf), sds((1, 16, 512), jnp.bool_))
    fn = lambda *x: cascade_decode(*x, platform="gpu")
  exp = export.export(jax.jit(fn), platforms=["cuda"],
                      disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*args)
  assert "triton" in exp.mlir_module()
