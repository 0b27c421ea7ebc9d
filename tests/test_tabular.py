"""The tabular LM: same contract as the transformer, exactly enumerable."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from tts_jax.models.tabular import enumerate_sequences, random_tabular
from tts_jax.sampling import sample


def test_enumeration_is_a_distribution_and_matches_forward():
  lm, params = random_tabular(4, 6, seed=0)
  seqs, logp = enumerate_sequences(lm, params, [2], 4)
  assert seqs.shape == (256, 4)
  np.testing.assert_allclose(np.exp(logp).sum(), 1.0, rtol=1e-9)
  full = np.concatenate([np.full((256, 1), 2), seqs], axis=1)
  lp = np.asarray(jax.nn.log_softmax(lm.forward(params, jnp.asarray(full))))
  recomputed = lp[np.arange(256)[:, None], np.arange(4)[None], seqs].sum(1)
  np.testing.assert_allclose(recomputed, logp, atol=1e-5)


def test_decode_matches_forward_with_inactive_samples():
  lm, params = random_tabular(3, 6, seed=1)
  logits, prefix = lm.prefill(params, jnp.array([[1, 2, 0], [0, 0, 0]]), jnp.array([2, 1]))
  cache = lm.init_cache(prefix, 2, 4)
  toks = jnp.array([[0, 2], [1, 1]])
  active = jnp.array([[True, False], [True, True]])
  out, cache = lm.decode(params, toks, cache, active)
  ref = lm.forward(params, jnp.array([[1, 2, 0], [0, 1, 0]]))
  np.testing.assert_allclose(out[0, 0], ref[0, 2], atol=1e-6)
  np.testing.assert_allclose(out[0, 1], ref[0, 1], atol=1e-6)  # inactive: unchanged prefix
  np.testing.assert_allclose(out[1, 0], ref[1, 1], atol=1e-6)
  np.testing.assert_array_equal(cache.lengths, [[3, 2], [2, 2]])


def test_the_sampler_draws_exact_sequence_probabilities():
  lm, params = random_tabular(4, 6, seed=2)
  n = 20000
  out = sample(lm, params, [[1, 3]], key=jax.random.key(0), num_samples=n, max_new_tokens=3)
  seqs, logp = enumerate_sequences(lm, params, [1, 3], 3)
  code = lambda s: (s[..., 0] * 4 + s[..., 1]) * 4 + s[..., 2]
  counts = np.bincount(code(np.asarray(out.tokens[0])), minlength=64)
  expected = n * np.exp(logp)[np.argsort(code(seqs))]
  big = expected >= 5
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3
  # The reported log-probs are the exact ones.
  got = np.asarray(out.logprobs[0].sum(-1))
  np.testing.assert_allclose(got, logp[np.searchsorted(code(seqs), code(np.asarray(out.tokens[0])))], atol=1e-4)
