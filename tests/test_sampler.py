"""The jitted sampler draws from process_logits' distribution and reports what it drew."""

import jax
import numpy as np
import pytest
from scipy import stats

from tts_jax.models import forward, init, qwen2_config
from tts_jax.sampling import LENGTH, STOP, process_logits, sample

V = 12
SETTINGS = dict(temperature=0.9, top_k=9, top_p=0.97, min_p=0.03)


@pytest.fixture(scope="module")
def model():
  cfg = qwen2_config(vocab_size=V, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8, max_position_embeddings=64)
  lm, params = init(cfg, seed=3)
  # Sharpen the random model so filtering removes real mass.
  params["lm_head"] = params["lm_head"] * 10.0
  return lm, params


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]


def exact_joint(lm, params, prompt):
  """q(t1, t2) of two sampled tokens, by enumeration with full forward passes."""
  first = process_logits(forward(lm, params, np.array([prompt]))[:, -1], **SETTINGS)[0]
  seqs = np.array([prompt + [t] for t in range(V)])
  second = process_logits(forward(lm, params, seqs)[:, -1], **SETTINGS)
  return np.exp(np.asarray(first)[:, None] + np.asarray(second))


def test_joint_token_frequencies_chi_square(model):
  lm, params = model
  n = 6000
  out = sample(lm, params, PROMPTS, key=jax.random.key(0), num_samples=n, max_new_tokens=2, **SETTINGS)
  for b, prompt in enumerate(PROMPTS):
    q = exact_joint(lm, params, prompt)
    toks = np.asarray(out.tokens[b])
    counts = np.zeros((V, V))
    np.add.at(counts, (toks[:, 0], toks[:, 1]), 1)
    assert counts[q == 0].sum() == 0, "a filtered-out token was sampled"
    q = q.astype(np.float64)
    expected = n * q
    big = expected >= 5
    assert big.sum() >= 10  # the test has power: many cells
    obs, exp = counts[big], expected[big]
    if expected[~big].sum() > 0:  # pool the small cells
      obs, exp = np.append(obs, counts[~big].sum()), np.append(exp, expected[~big].sum())
    exp = exp * obs.sum() / exp.sum()  # q sums to 1 only up to float32 rounding
    pvalue = stats.chisquare(obs, exp).pvalue
    assert pvalue > 1e-3, pvalue


def test_reported_logprobs_and_entropy(model):
  lm, params = model
  out = sample(lm, params, PROMPTS, key=jax.random.key(1), num_samples=5, max_new_tokens=6, **SETTINGS)
  for b, prompt in enumerate(PROMPTS):
    for n in range(5):
      toks = list(np.asarray(out.tokens[b, n]))
      logits = forward(lm, params, np.array([prompt + toks]))[0, len(prompt) - 1:-1]
      logp = np.asarray(jax.nn.log_softmax(logits))
      logq = np.asarray(process_logits(logits, **SETTINGS))
      idx = np.arange(6), toks
      np.testing.assert_allclose(np.asarray(out.logprobs[b, n]), logp[idx], atol=1e-4)
      np.testing.assert_allclose(np.asarray(out.proposal_logprobs[b, n]), logq[idx], atol=1e-4)
      ent = -(np.exp(logp) * logp).sum(-1)
      np.testing.assert_allclose(np.asarray(out.entropy[b, n]), ent, atol=1e-4)


def test_stop_tokens_lengths_and_absorbing(model):
  lm, params = model
  stops = (0, 5)
  out = sample(lm, params, PROMPTS, key=jax.random.key(2), num_samples=64, max_new_tokens=8,
               stop_tokens=stops, pad_id=11)
  toks, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  reason = np.asarray(out.finish_reason)
  seen_stop = seen_length = False
  for b in range(2):
    for n in range(64):
      row = list(toks[b, n])
      hits = [i for i, t in enumerate(row) if t in stops]
      if hits and hits[0] < lengths[b, n]:
        seen_stop = True
        assert reason[b, n] == STOP and lengths[b, n] == hits[0] + 1
        assert all(t == 11 for t in row[hits[0] + 1:])
        assert np.all(np.asarray(out.logprobs[b, n, hits[0] + 1:]) == 0)
      else:
        seen_length = True
        assert reason[b, n] == LENGTH and lengths[b, n] == 8
  assert seen_stop and seen_length


def test_greedy_equals_argmax_of_forward(model):
  lm, params = model
  out = sample(lm, params, PROMPTS, key=jax.random.key(0), num_samples=2, max_new_tokens=5, temperature=0)
  for b, prompt in enumerate(PROMPTS):
    seq = list(prompt)
    for _ in range(5):
      seq.append(int(np.argmax(np.asarray(forward(lm, params, np.array([seq]))[0, -1]))))
    np.testing.assert_array_equal(np.asarray(out.tokens[b]), [seq[len(prompt):]] * 2)
    np.testing.assert_allclose(np.asarray(out.proposal_logprobs[b]), 0.0)


def test_deterministic_and_prefix_sharing_invariant(model):
  lm, params = model
  kw = dict(num_samples=7, max_new_tokens=6, **SETTINGS)
  a = sample(lm, params, PROMPTS, key=jax.random.key(5), **kw)
  b = sample(lm, params, PROMPTS, key=jax.random.key(5), **kw)
  c = sample(lm, params, PROMPTS, key=jax.random.key(6), **kw)
  d = sample(lm, params, PROMPTS, key=jax.random.key(5), share_prefix=False, **kw)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(d.tokens))
  np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(d.logprobs), atol=1e-5)


def test_prompt_samples_do_not_depend_on_batch_mates(model):
  lm, params = model
  keys = jax.random.split(jax.random.key(9), 3)
  kw = dict(num_samples=4, max_new_tokens=6, **SETTINGS)
  together = sample(lm, params, PROMPTS + [[3, 3]], key=keys, **kw)
  alone = sample(lm, params, [PROMPTS[1]], key=keys[1:2], **kw)
  np.testing.assert_array_equal(np.asarray(together.tokens[1]), np.asarray(alone.tokens[0]))
  np.testing.assert_allclose(np.asarray(together.logprobs[1]), np.asarray(alone.logprobs[0]), atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompts=[[1] * 60], max_new_tokens=8), "exceeds the model's context of 64"),
    (dict(prompts=[[1, 2], []]), "empty prompt at index 1"),
    (dict(prompts=[[1, 2], [3, V]]), f"token id {V} at position 1, outside the vocabulary"),
    (dict(num_samples=0), "num_samples must be"),
    (dict(key=jax.random.PRNGKey(0)), "typed PRNG key"),
    (dict(key=jax.random.split(jax.random.key(0), 3)), "one per prompt \\(2\\)"),
    (dict(max_new_tokens=0), "max_new_tokens must be"),
    (dict(top_p=1.5), "top_p must be in"),
    (dict(prompts=np.zeros((2, 3), np.int32)), "needs prompt_lengths"),
    (dict(prompts=np.zeros((2, 3), np.int32), prompt_lengths=[3, 4]), "prompt_lengths must be in"),
])
def test_bad_input_raises(model, kwargs, match):
  lm, params = model
  kw = dict(prompts=PROMPTS, key=jax.random.key(0), max_new_tokens=8)
  kw.update(kwargs)
  with pytest.raises(ValueError, match=match):
    sample(lm, params, kw.pop("prompts"), **kw)


@pytest.mark.parametrize("per_sample", [False, True])
def test_token_draws_are_jax_categorical_bit_for_bit(per_sample):
  """The sampler's Gumbel-max (noise materialised before the argmax, for speed) draws exactly
  what `jax.random.categorical` draws, with -inf (filtered) tokens and near-ties."""
  import jax.numpy as jnp
  from tts_jax.sampling.token_step import _categorical
  rng = np.random.default_rng(0)
  logq = rng.normal(size=(3, 5, 300)).astype(np.float32) * 3
  logq[0, :, 100:] = -np.inf  # top-k style filtering
  logq[1, :, :2] = 4.0  # an exact tie
  logq = jnp.asarray(logq)
  for seed in range(20):
    keys = jax.random.split(jax.random.key(seed), (3, 5) if per_sample else 3)
    want = (jax.vmap(jax.vmap(jax.random.categorical)) if per_sample
            else jax.vmap(lambda k, l: jax.random.categorical(k, l, axis=-1)))(keys, logq)
    np.testing.assert_array_equal(np.asarray(jax.jit(_categorical)(keys, logq)), np.asarray(want))


def test_first_argmax_is_argmax():
  """`first_argmax` (the CPU draw's two plain reductions) is `jnp.argmax` on ties (the first),
  whole -inf rows, +inf, NaN (the first NaN, as argmax counts NaN the largest) and constants."""
  import jax.numpy as jnp
  from tts_jax.sampling.token_step import first_argmax
  x = np.random.default_rng(1).normal(size=(8, 3, 257)).astype(np.float32)
  x[0, :, [5, 200]] = 9.0
  x[1] = -np.inf
  x[2, 0, [7, 9]] = np.nan
  x[2, 1, 3], x[2, 1, 250] = np.inf, np.inf
  x[3] = 1.5
  x[4, :, -1] = 30.0
  np.testing.assert_array_equal(np.asarray(jax.jit(first_argmax)(x)), np.asarray(jnp.argmax(x, axis=-1)))
