"""Decoding with the shared-prefix cache equals a full forward pass from scratch."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.models import forward, init, qwen2_config
from tts_jax.kernels import attend_partial, merge_partials


@pytest.fixture(scope="module")
def model():
  cfg = qwen2_config(vocab_size=97, hidden_size=48, intermediate_size=64, num_layers=2, num_heads=6,
                     num_kv_heads=2, head_dim=8, max_position_embeddings=128)
  return init(cfg, seed=1)


def test_decode_matches_forward_every_position(model):
  """3 prompts (lengths 3, 9, 14) x 4 samples with different continuations; some samples
  are inactive at some steps (finished or waiting) and must not disturb anything."""
  lm, params = model
  rng = np.random.RandomState(0)
  b, n, steps, tp = 3, 4, 10, 16
  lengths = np.array([3, 9, 14])
  prompts = rng.randint(0, 97, size=(b, tp)).astype(np.int32)
  conts = rng.randint(0, 97, size=(b, n, steps)).astype(np.int32)
  active = rng.rand(b, n, steps) < 0.75
  active[:, :, 0] = True
  decode = jax.jit(lm.decode)
  first, prefix = jax.jit(lm.prefill)(params, jnp.asarray(prompts), jnp.asarray(lengths))
  cache = lm.init_cache(prefix, n, steps)
  history = [[list(prompts[i, :lengths[i]]) for _ in range(n)] for i in range(b)]
  got = {}  # (i, j, position of the fed token) -> logits after it
  for i in range(b):
    got[i, 0, lengths[i] - 1] = np.asarray(first[i])
  for t in range(steps):
    logits, cache = decode(params, jnp.asarray(conts[:, :, t]), cache, jnp.asarray(active[:, :, t]))
    for i in range(b):
      for j in range(n):
        if active[i, j, t]:
          history[i][j].append(conts[i, j, t])
          got[i, j, len(history[i][j]) - 1] = np.asarray(logits[i, j])
  # One forward pass over all b * n histories, right-padded.
  rows = [history[i][j] for i in range(b) for j in range(n)]
  width = max(map(len, rows))
  full = np.zeros((len(rows), width), np.int32)
  for r, h in enumerate(rows):
    full[r, :len(h)] = h
  ref = np.asarray(forward(lm, params, full, lengths=np.array([len(h) for h in rows])))
  for (i, j, pos), value in got.items():
    np.testing.assert_allclose(value, ref[i * n + j, pos], atol=1e-5, err_msg=f"{i} {j} {pos}")
  assert len(got) == b + active.sum()
  np.testing.assert_array_equal(np.asarray(cache.lengths), active.sum(-1))


def test_forward_right_padding_is_ignored(model):
  lm, params = model
  rng = np.random.RandomState(1)
  tokens = rng.randint(0, 97, size=(2, 12)).astype(np.int32)
  padded = tokens.copy()
  padded[0, 5:] = rng.randint(0, 97, size=7)
  a = np.asarray(forward(lm, params, tokens, lengths=np.array([5, 12])))
  b = np.asarray(forward(lm, params, padded, lengths=np.array([5, 12])))
  np.testing.assert_allclose(a[0, :5], b[0, :5], atol=1e-6)
  np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_merge_of_partials_is_exact_softmax():
  rng = np.random.RandomState(2)
  q = jnp.asarray(rng.randn(2, 3, 2, 2, 8), jnp.float32)
  k = jnp.asarray(rng.randn(2, 2, 11, 8), jnp.float32)  # [B, Hkv, Tk, D]
  v = jnp.asarray(rng.randn(2, 2, 11, 8), jnp.float32)
  mask = jnp.asarray(rng.rand(2, 3, 11) < 0.7).at[:, :, 0].set(True)
  full, lse = attend_partial(q, k, v, mask, 0.3)
  split = 5
  o1, l1 = attend_partial(q, k[:, :, :split], v[:, :, :split], mask[..., :split], 0.3)
  o2, l2 = attend_partial(q, k[:, :, split:], v[:, :, split:], mask[..., split:], 0.3)
  merged, lse_m = merge_partials(o1, l1, o2, l2)
  np.testing.assert_allclose(merged, full, atol=1e-6)
  np.testing.assert_allclose(lse_m, lse, atol=1e-6)
  # An empty key set contributes nothing.
  none = jnp.zeros_like(mask)
  o3, l3 = attend_partial(q, k, v, none, 0.3)
  assert np.all(np.isneginf(l3)) and np.all(o3 == 0)
  merged2, _ = merge_partials(full, lse, o3, l3)
  np.testing.assert_allclose(merged2, full, atol=1e-7)
  # Against jax.nn.dot_product_attention (query heads = Hkv * G).
  ref = jax.nn.dot_product_attention(q.reshape(2, 3, 4, 8), jnp.repeat(jnp.swapaxes(k, 1, 2), 2, axis=2),
                                     jnp.repeat(jnp.swapaxes(v, 1, 2), 2, axis=2), mask=mask[:, None], scale=0.3)
  np.testing.assert_allclose(full.reshape(2, 3, 4, 8), ref, atol=1e-5)


def test_gathered_cache_decodes_like_its_ancestors(model):
  """Resampling moves suffix state only: after gather, each particle continues exactly as a
  from-scratch forward over its ancestor's history."""
  lm, params = model
  rng = np.random.RandomState(3)
  b, n = 2, 4
  lengths = np.array([5, 11])
  prompts = rng.randint(0, 97, size=(b, 16)).astype(np.int32)
  first, prefix = lm.prefill(params, jnp.asarray(prompts), jnp.asarray(lengths))
  cache = lm.init_cache(prefix, n, 8)
  hist = [[list(prompts[i, :lengths[i]]) for _ in range(n)] for i in range(b)]
  decode = jax.jit(lm.decode)
  for t in range(3):
    toks = rng.randint(0, 97, size=(b, n)).astype(np.int32)
    _, cache = decode(params, jnp.asarray(toks), cache)
    for i in range(b):
      for j in range(n):
        hist[i][j].append(toks[i, j])
  anc = np.array([[3, 3, 0, 1], [2, 0, 2, 2]])
  cache = cache.gather(jnp.asarray(anc))
  hist = [[list(hist[i][anc[i, j]]) for j in range(n)] for i in range(b)]
  toks = rng.randint(0, 97, size=(b, n)).astype(np.int32)
  logits, _ = decode(params, jnp.asarray(toks), cache)
  for i in range(b):
    for j in range(n):
      ref = np.asarray(forward(lm, params, np.array([hist[i][j] + [toks[i, j]]])))[0, -1]
      np.testing.assert_allclose(np.asarray(logits[i, j]), ref, atol=1e-5)


@pytest.mark.parametrize("b,n", [(1, 4), (2, 32)])
@pytest.mark.parametrize("compact", [False, True])
def test_decode_step_neither_copies_nor_transposes_its_caches(model, b, n, compact):
  """The caches are head-major, as attention reads them, and each decode writes its token in
  place: the optimised step has no copy or transpose of a prompt or suffix cache (token-major
  caches were transposed at every step; a dynamic-update-slice write was fused into each of
  its consumers by XLA:CPU, each with its own copy of the cache)."""
  lm, params = model
  tp, ts = 40, 24  # sizes no other array of the step has
  _, prefix = lm.prefill(params, jnp.ones((b, tp), jnp.int32), jnp.full((b,), tp, jnp.int32))
  cache = lm.init_cache(prefix, n, ts, compact=compact)
  assert cache.k[0].shape == (b, n, 2, ts, 8) and prefix.k[0].shape == (b, 2, tp, 8)
  step = jax.jit(lm.decode, donate_argnums=2)
  text = step.lower(params, jnp.ones((b, n), jnp.int32), cache).compile().as_text()
  moves = [line.strip() for line in text.splitlines()
           if re.search(r"= f32\[([\d,]*\b(40|24)\b[\d,]*)\]\{[^}]*\} (copy|transpose)\(", line)]
  assert not moves, "\n".join(moves)
  out, new = step(params, jnp.ones((b, n), jnp.int32), cache)
  assert out.shape == (b, n, 97) and new.k[0].shape == (b, n, 2, ts, 8)
