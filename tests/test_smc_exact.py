"""SMC on a tabular LM against exact enumeration: E[Z_hat] = Z for every scheme and ESS threshold."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.models.tabular import random_tabular
from tts_jax.smc import Resample, SMCConfig, run_smc

V, T, DELIM, EOS = 4, 5, 0, 3
PROMPT = [1, 2]


@pytest.fixture(scope="module")
def setup():
  lm, params = random_tabular(V, len(PROMPT) + T, seed=4, scale=1.0)
  phi_table = jax.random.normal(jax.random.key(5), (lm.num_prefixes,)) * 0.7

  def log_phi_of(seq):
    return float(phi_table[lm.prefix_id(PROMPT + list(seq))])

  def potential(tokens, lengths, done):
    ids = jnp.full(lengths.shape, lm.prefix_id(PROMPT), jnp.int32)
    for j in range(tokens.shape[-1]):
      ids = jnp.where(j < lengths, ids * V + tokens[..., j] + 1, ids)
    return phi_table[ids]

  # Exact Z = sum over complete generations x of p(x) phi(x).
  table = np.asarray(params["logits"], np.float64)
  logp = table - np.logaddexp.reduce(table, axis=1, keepdims=True)
  z = 0.0
  for n in range(1, T + 1):
    for seq in itertools.product(range(V), repeat=n):
      if EOS in seq[:-1] or (n < T and seq[-1] != EOS):
        continue
      i, lp = lm.prefix_id(PROMPT), 0.0
      for tok in seq:
        lp += logp[i, tok]
        i = i * V + tok + 1
      z += np.exp(lp + log_phi_of(seq))
  return lm, params, potential, z


@pytest.mark.parametrize("scheme", ["multinomial", "stratified", "systematic", "residual"])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_z_hat_is_unbiased(setup, scheme, threshold):
  lm, params, potential, z = setup
  reps = 2000
  cfg = SMCConfig(num_particles=4, max_new_tokens=T, delimiters=(DELIM,), stop_tokens=(EOS,),
                  select=Resample(scheme, threshold))
  toks = jnp.tile(jnp.asarray([PROMPT]), (reps, 1))
  p = run_smc(lm, params, toks, jnp.full((reps,), len(PROMPT)), jax.random.key(7), cfg=cfg, potential=potential)
  z_hat = np.exp(np.asarray(p.final_log_z(), np.float64))
  assert np.all(np.asarray(p.done))
  se = z_hat.std(ddof=1) / np.sqrt(reps)
  assert abs(z_hat.mean() - z) < 3 * se, (z_hat.mean(), z, se)
  if threshold == 0.0:
    assert int(np.asarray(p.num_resamples).max()) == 0
  if threshold == 1.0:  # after every round but the last (a finished prompt is never selected again)
    # (the survivors' step counts miss the rounds of particles that resampling discarded: >=)
    rounds = np.asarray(p.steps).max(axis=1)
    assert np.all(np.asarray(p.num_resamples) >= rounds - 1) and rounds.max() > 1
