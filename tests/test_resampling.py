"""Resampling: unbiased counts, zero weights never drawn, systematic = permutation, jit-invariant."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.smc import SCHEMES, ess, get_resampler

W = np.array([0.3, 0.0, 0.05, 0.25, 0.0, 0.125, 0.2, 0.075])


@pytest.fixture(scope="module")
def counts():
  """Offspring counts over 4000 seeds for every scheme, N = 8 draws."""
  keys = jax.random.split(jax.random.key(0), 4000)
  lw = jnp.log(jnp.asarray(W, jnp.float32))
  out = {}
  for name, f in SCHEMES.items():
    idx = jax.jit(jax.vmap(lambda k: f(k, lw, 8)))(keys)
    out[name] = np.asarray(jax.nn.one_hot(idx, 8).sum(1))
  return out


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_expected_counts_are_n_w(counts, name):
  c = counts[name]
  s = c.shape[0]
  mean, var = c.mean(0), c.var(0, ddof=1)
  target = 8 * W
  for i in range(8):
    if var[i] == 0:
      assert mean[i] == target[i], (name, i)
    else:
      assert abs(mean[i] - target[i]) < 4 * np.sqrt(var[i] / s), (name, i, mean[i], target[i])
  assert np.all(c.sum(1) == 8)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_zero_weight_particles_never_chosen(counts, name):
  assert counts[name][:, [1, 4]].sum() == 0


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_zero_weight_last_particle_when_cumsum_ends_below_one(name):
  # float32 weights whose normalised cumulative sum ends below 1: a naive inverse CDF with
  # draws near 1 falls off the end and picks the zero-weight last particle.
  w = np.full(1000, 1e-3, np.float32)
  w[-3:] = 0.0
  lw = jnp.log(jnp.asarray(w))
  f = get_resampler(name)
  for seed in range(200):
    idx = np.asarray(f(jax.random.key(seed), lw, 1000))
    assert idx.max() <= 996 and idx.min() >= 0
  # Draws pinned at the very top of [0, 1) still land on the last nonzero particle.
  from tts_jax.smc.resampling import _invert, _unnormalised
  top = np.asarray(_invert(_unnormalised(lw), jnp.full((4,), 1 - 2 ** -24, jnp.float32)))
  assert np.all(top == 996)


def test_systematic_uniform_weights_is_a_permutation():
  for n in (1, 7, 64, 1000):
    for seed in range(20):
      idx = np.asarray(SCHEMES["systematic"](jax.random.key(seed), jnp.zeros(n), n))
      assert sorted(idx.tolist()) == list(range(n))


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_same_with_and_without_jit(name):
  f = SCHEMES[name]
  lw = jnp.log(jnp.asarray(W, jnp.float32))
  for seed in range(5):
    key = jax.random.key(seed)
    np.testing.assert_array_equal(np.asarray(f(key, lw, 8)), np.asarray(jax.jit(f, static_argnums=2)(key, lw, 8)))
    with jax.disable_jit():
      np.testing.assert_array_equal(np.asarray(f(key, lw, 8)), np.asarray(jax.jit(f, static_argnums=2)(key, lw, 8)))


def test_residual_keeps_the_deterministic_copies():
  w = np.array([0.5, 0.25, 0.125, 0.125])
  idx = np.asarray(SCHEMES["residual"](jax.random.key(0), jnp.log(jnp.asarray(w)), 8))
  np.testing.assert_array_equal(np.bincount(idx, minlength=4), [4, 2, 1, 1])  # all deterministic


def test_ess():
  np.testing.assert_allclose(ess(jnp.zeros(10)), 10.0, rtol=1e-6)
  np.testing.assert_allclose(ess(jnp.array([0.0, -jnp.inf, -jnp.inf])), 1.0, rtol=1e-6)
  w = np.array([0.5, 0.3, 0.2])
  np.testing.assert_allclose(ess(jnp.log(jnp.asarray(w)) + 123.0), 1 / np.sum(w ** 2), rtol=1e-5)
  assert float(ess(jnp.full(3, -jnp.inf))) == 0.0
  np.testing.assert_allclose(ess(jnp.zeros((2, 5)), axis=-1), [5.0, 5.0], rtol=1e-6)
  with pytest.raises(ValueError, match="unknown resampling scheme 'stochastic'"):
    get_resampler("stochastic")
