"""Particle Gibbs against enumeration on a tabular target sigma(x) proportional to p(x) phi(x):
a sweep leaves sigma invariant (chains started at exact samples stay exact), and chains started
anywhere converge to it. Chi-square tests over all generations; each test also checks that
the same statistic rejects a wrong distribution, so it can fail."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tests.tabular_target import make_target
from tts_jax.smc import Resample, SMCConfig
from tts_jax.smc.gibbs import particle_gibbs

DELIM = 0


@pytest.fixture(scope="module")
def target():
  return make_target(final_only=False)  # a potential at every step: weights change along the way


def _cfg(tgt, n):
  return SMCConfig(num_particles=n, max_new_tokens=tgt.max_new, delimiters=(DELIM,), stop_tokens=tgt.stops,
                   select=Resample("multinomial", ess_threshold=1.0))


def _chi2_pvalue(tgt, tokens, lengths, probs) -> float:
  seqs, _, _ = tgt.log_sigma()
  counts = np.bincount(tgt.seq_index(tokens, lengths), minlength=len(seqs)).astype(float)
  expected = len(np.asarray(lengths)) * probs
  big = expected >= 5
  return stats.chisquare(np.append(counts[big], counts[~big].sum()),
                         np.append(expected[big], expected[~big].sum())).pvalue


@pytest.mark.parametrize("n", [2, 4])
def test_a_sweep_leaves_the_target_invariant(target, n):
  seqs, lu, log_z = target.log_sigma()
  sigma = np.exp(lu - log_z)
  reps = 6000
  init_t, init_l = target.exact_samples(reps, seed=3)
  chain = particle_gibbs(target.lm, target.params, *target.prompts(reps), jax.random.key(n), cfg=_cfg(target, n),
                         potential=target.potential, sweeps=1, init_tokens=init_t, init_lengths=init_l)
  tokens, lengths = np.asarray(chain.tokens[0]), np.asarray(chain.lengths[0])
  assert _chi2_pvalue(target, tokens, lengths, sigma) > 1e-3
  # The chain moved (a sweep that returned its reference would pass trivially)...
  moved = np.mean(target.seq_index(tokens, lengths) != target.seq_index(np.asarray(init_t), np.asarray(init_l)))
  assert moved > 0.15, moved
  # ...and the statistic rejects the model p itself, the distribution SMC proposes from.
  _, logp = target.generations
  assert _chi2_pvalue(target, tokens, lengths, np.exp(logp)) < 1e-6


def test_chains_from_a_bad_start_converge(target):
  seqs, lu, log_z = target.log_sigma()
  sigma = np.exp(lu - log_z)
  reps = 4000
  worst = int(np.argmin(lu))  # every chain starts at the least likely generation under sigma
  init_t = np.zeros((reps, target.max_new), np.int32)
  init_t[:, :len(seqs[worst])] = seqs[worst]
  init_l = np.full(reps, len(seqs[worst]), np.int32)
  chain = particle_gibbs(target.lm, target.params, *target.prompts(reps), jax.random.key(0), cfg=_cfg(target, 4),
                         potential=target.potential, sweeps=6, init_tokens=init_t, init_lengths=init_l)
  last = _chi2_pvalue(target, np.asarray(chain.tokens[-1]), np.asarray(chain.lengths[-1]), sigma)
  assert last > 1e-3, last
  share_first = np.mean(target.seq_index(np.asarray(chain.tokens[0]), np.asarray(chain.lengths[0])) == worst)
  assert share_first < 0.5  # one sweep already left the start (with 3 fresh particles against 1)
  # Without a given start the first sweep is plain SMC, and the chain's decoded-token count adds up.
  free = particle_gibbs(target.lm, target.params, *target.prompts(8), jax.random.key(1), cfg=_cfg(target, 4),
                        potential=target.potential, sweeps=2)
  assert free.tokens.shape == (2, 8, target.max_new) and bool(jnp.all(free.particles.decoded > 0))


def test_bad_arguments_are_named(target):
  with pytest.raises(ValueError, match="sweeps must be an int >= 1"):
    particle_gibbs(target.lm, target.params, *target.prompts(2), jax.random.key(0), cfg=_cfg(target, 2),
                   potential=target.potential, sweeps=0)
  with pytest.raises(ValueError, match="init_tokens and init_lengths"):
    particle_gibbs(target.lm, target.params, *target.prompts(2), jax.random.key(0), cfg=_cfg(target, 2),
                   potential=target.potential, sweeps=1, init_tokens=np.zeros((2, target.max_new), np.int32))
