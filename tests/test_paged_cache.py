"""The paged suffix cache: decodes like the contiguous cache through resampling; no page leaks; clear OOM."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.models import init, qwen2_config
from tts_jax.models.lm import PrefixCache
from tts_jax.models.paged import check_pages, init_paged_cache


@pytest.fixture(scope="module")
def model():
  cfg = qwen2_config(vocab_size=53, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, max_position_embeddings=64)
  return init(cfg, seed=0)


def test_resampled_particles_decode_like_the_contiguous_cache(model):
  lm, params = model
  prompts, plens = jnp.asarray([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]]), jnp.asarray([5, 3])
  _, prefix = lm.prefill(params, prompts, plens)
  n, cap = 4, 14
  flat = lm.init_cache(prefix, n, cap, compact=True)
  paged = lm.init_paged_cache(prefix, n, cap, page_size=4)
  rng = np.random.default_rng(0)
  step = jax.jit(lambda c, t, a: lm.decode(params, t, c, active=a))
  for i in range(cap):
    toks = jnp.asarray(rng.integers(0, 53, (2, n)), jnp.int32)
    active = jnp.asarray(rng.random((2, n)) < 0.8)
    out_f, flat = step(flat, toks, active)
    out_p, paged = step(paged, toks, active)
    np.testing.assert_allclose(np.asarray(out_p), np.asarray(out_f), atol=1e-5)
    if i % 2:
      anc = jnp.asarray(rng.integers(0, n, (2, n)), jnp.int32)
      flat, paged = flat.gather(anc), paged.gather(anc)
    np.testing.assert_array_equal(np.asarray(paged.refcount), np.asarray(paged.recount()))
  check_pages(paged)


def _fake_prefix(b):
  return PrefixCache(k=(), v=(), lengths=jnp.ones((b,), jnp.int32))


class _Cfg:  # the fields init_paged_cache reads
  num_kv_heads, head_dim, num_layers, jnp_dtype = 1, 1, 1, jnp.float32


def test_thousand_random_resamplings_leak_no_page_and_keep_contents():
  b, n, cap, ps = 2, 6, 12, 4
  cache = init_paged_cache(_fake_prefix(b), _Cfg, n, cap, page_size=ps)
  start = np.asarray(cache.free_pages())
  assert np.all(start == n * 3)

  @jax.jit
  def write(cache, active, values):
    cache, page, offset = cache.prepare_write(active)
    k, v = cache.write_layer(0, page, offset, values[..., None, None], values[..., None, None])
    return cache.replace(k=(k,), v=(v,), lengths=cache.lengths + active.astype(jnp.int32))

  gather = jax.jit(lambda c, a: c.gather(a))
  view = jax.jit(lambda c: c.view(c.k[0], c.v[0])[0][:, :, 0, :, 0])  # [B, N, Hkv, slots, D] -> [B, N, slots]
  mirror = [[[] for _ in range(n)] for _ in range(b)]
  rng = np.random.default_rng(1)
  for step in range(1000):
    full = np.array([[len(mirror[i][j]) >= cap for j in range(n)] for i in range(b)])
    active = (rng.random((b, n)) < 0.7) & ~full
    values = rng.normal(size=(b, n)).astype(np.float32)
    cache = write(cache, jnp.asarray(active), jnp.asarray(values))
    for i in range(b):
      for j in range(n):
        if active[i, j]:
          mirror[i][j].append(values[i, j])
    anc = rng.integers(0, n, (b, n))
    if rng.random() < 0.3:  # sometimes start particles over (length 0) so the run does not just fill up
      anc = np.where(rng.random((b, n)) < 0.2, -1, anc)
    keep = np.where(anc < 0, 0, anc)
    cache = gather(cache, jnp.asarray(keep, jnp.int32))
    mirror = [[list(mirror[i][keep[i, j]]) if anc[i, j] >= 0 else [] for j in range(n)] for i in range(b)]
    if np.any(anc < 0):
      lengths = jnp.where(jnp.asarray(anc < 0), 0, cache.lengths)
      cache = cache.replace(lengths=lengths)
      cache = cache.replace(refcount=cache.recount())
    rc = np.asarray(cache.refcount)
    np.testing.assert_array_equal(rc, np.asarray(cache.recount()))
    assert not np.asarray(cache.oom).any()
    if step % 50 == 0 or step == 999:
      got = np.asarray(view(cache))
      for i in range(b):
        for j in range(n):
          np.testing.assert_array_equal(got[i, j, :len(mirror[i][j])], np.asarray(mirror[i][j], np.float32))
  # Everything released: the free count returns to its start.
  cache = cache.replace(lengths=jnp.zeros_like(cache.lengths))
  cache = cache.replace(refcount=cache.recount())
  np.testing.assert_array_equal(np.asarray(cache.free_pages()), start)


def test_running_out_of_pages_is_a_clear_error_not_corruption():
  b, n, ps = 1, 4, 2
  cache = init_paged_cache(_fake_prefix(b), _Cfg, n, 8, page_size=ps, num_pages=3)
  for t in range(3):  # 4 particles each need a page at t = 0: only 3 exist
    cache, page, offset = cache.prepare_write(jnp.ones((b, n), bool))
    vals = jnp.full((b, n), float(t)) + jnp.arange(n)[None] * 10
    k, v = cache.write_layer(0, page, offset, vals[..., None, None], vals[..., None, None])
    cache = cache.replace(k=(k,), v=(v,), lengths=cache.lengths + 1)
  assert bool(cache.oom[0])
  with pytest.raises(RuntimeError, match="ran out of pages"):
    check_pages(cache)
  # The three particles that got pages hold exactly their own values.
  got = np.asarray(cache.view(cache.k[0], cache.v[0])[0][0, :, 0, :2, 0])
  np.testing.assert_array_equal(got[:3], np.array([[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]]))


def test_particle_filter_with_paged_cache_equals_contiguous(model):
  from tts_jax.search import beam_search, particle_filter
  from tts_jax.smc import run_smc
  lm, params = model
  prompts, plens = jnp.asarray([[1, 2, 3, 4], [5, 6, 0, 0]]), jnp.asarray([4, 2])
  pot = lambda tokens, lengths, done: -(jnp.sum(tokens % 7, axis=-1) % 5).astype(jnp.float32) / 2
  for cfg in (particle_filter(6, max_new_tokens=11, max_step_tokens=3, stop_tokens=(9,), ess_threshold=1.0),
              beam_search(6, 3, max_new_tokens=11, max_step_tokens=3, stop_tokens=(9,))):
    flat = run_smc(lm, params, prompts, plens, jax.random.key(0), cfg=cfg, potential=pot)
    paged = run_smc(lm, params, prompts, plens, jax.random.key(0), cfg=dataclasses.replace(cfg, page_size=4),
                    potential=pot)
    assert int(np.asarray(paged.num_resamples).min()) >= 2
    np.testing.assert_array_equal(np.asarray(paged.tokens), np.asarray(flat.tokens))
    np.testing.assert_allclose(np.asarray(paged.log_weights), np.asarray(flat.log_weights), atol=1e-5)
  with pytest.raises(RuntimeError, match="ran out of pages"):
    run_smc(lm, params, prompts, plens, jax.random.key(0), cfg=dataclasses.replace(cfg, page_size=4, num_pages=3),
            potential=pot)
