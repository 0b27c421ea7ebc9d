"""Local acceptance (LATTS's resample move) against enumeration on a tabular LM where every
token is a step: the solutions follow the exact capped-rejection distribution (chi-square),
and the mean number of draws per step matches its exact expectation. Each check also rejects
the nearest wrong answer (plain sampling; an uncapped rejection sampler)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tts_jax.models.tabular import random_tabular
from tts_jax.search.latts import local_acceptance

V, T, STOP, PROMPT = 4, 3, 3, [1, 2]


@pytest.fixture(scope="module")
def setup():
  lm, params = random_tabular(V, len(PROMPT) + T, seed=7, scale=1.0)
  r = np.random.default_rng(1).uniform(0.05, 0.95, size=lm.num_prefixes)
  log_r = jnp.asarray(np.log(r), jnp.float32)

  def potential(tokens, lengths, done):
    ids = jnp.full(lengths.shape, lm.prefix_id(PROMPT), jnp.int32)
    for j in range(tokens.shape[-1]):
      ids = jnp.where(j < lengths, ids * V + tokens[..., j] + 1, ids)
    return log_r[ids]

  table = np.asarray(params["logits"], np.float64)
  logp = table - np.logaddexp.reduce(table, axis=1, keepdims=True)
  return lm, params, potential, r, logp


def _exact(lm, r, logp, k, capped=True):
  """{generation: probability} and the expected draws per step, under local acceptance."""
  probs, draws = {}, []

  def step_dist(prefix):
    i = lm.prefix_id(PROMPT + list(prefix))
    p = np.exp(logp[i])
    acc = np.array([r[i * V + a + 1] for a in range(V)])
    rho = float(np.sum(p * acc))
    if not capped:
      return p * acc / rho, 1.0 / rho
    miss = (1 - rho) ** (k - 1)
    tries = sum(j * (1 - rho) ** (j - 1) * rho for j in range(1, k)) + k * miss
    return p * acc * (1 - miss) / rho + miss * p, tries

  def walk(prefix, prob):
    q, tries = step_dist(prefix)
    draws.append((prob, tries))
    for a in range(V):
      seq = prefix + (a,)
      if a == STOP or len(seq) == T:
        probs[seq] = probs.get(seq, 0.0) + prob * q[a]
      else:
        walk(seq, prob * q[a])

  walk((), 1.0)
  steps = sum(p * (len(s)) for s, p in probs.items())
  return probs, sum(p * t for p, t in draws) / steps


def test_solutions_follow_the_capped_rejection_distribution(setup):
  lm, params, potential, r, logp = setup
  reps, k = 3000, 3
  out = local_acceptance(lm, params, jnp.asarray([PROMPT]), jnp.asarray([len(PROMPT)]), jax.random.key(0),
                         potential=potential, num_samples=reps, max_tries=k, max_new_tokens=T,
                         delimiters=(0, 1, 2), stop_tokens=(STOP,))
  toks, lens = np.asarray(out.tokens[0]), np.asarray(out.length[0])
  seqs = [tuple(toks[i, :lens[i]]) for i in range(reps)]
  exact, mean_tries = _exact(lm, r, logp, k)
  keys = sorted(exact)
  counts = np.array([sum(s == key for s in seqs) for key in keys], float)
  assert sum(counts) == reps  # every solution is a complete generation

  def pvalue(probs):
    expected = reps * np.array([probs[key] for key in keys])
    big = expected >= 5
    return stats.chisquare(np.append(counts[big], counts[~big].sum()),
                           np.append(expected[big], expected[~big].sum())).pvalue

  assert pvalue(exact) > 1e-3
  assert pvalue(_exact(lm, r, logp, k, capped=False)[0]) < 1e-6  # the cap matters at K = 3
  assert pvalue(_exact(lm, r, logp, 1)[0]) < 1e-6  # ...and so does the acceptance (K = 1: plain sampling)
  # Draws per step: the exact expectation of the sequential procedure.
  per_step = np.asarray(out.tries[0]) / np.asarray(out.steps[0])
  tries = np.asarray(out.tries[0], np.float64).sum() / np.asarray(out.steps[0]).sum()
  se = per_step.std() / np.sqrt(reps)
  assert abs(tries - mean_tries) < 4 * se + 0.01, (tries, mean_tries, se)
  assert np.all(np.asarray(out.tries[0]) <= k * np.asarray(out.steps[0]))
  # log_potential is the potential of the final solution.
  ids = [lm.prefix_id(PROMPT + list(s)) for s in seqs]
  np.testing.assert_allclose(np.asarray(out.log_potential[0]), np.log(r[ids]), rtol=1e-5)


def test_bad_arguments_are_named(setup):
  lm, params, potential, _, _ = setup
  args = (lm, params, jnp.asarray([PROMPT]), jnp.asarray([2]), jax.random.key(0))
  with pytest.raises(ValueError, match="max_tries must be an int >= 1"):
    local_acceptance(*args, potential=potential, num_samples=2, max_tries=0, max_new_tokens=T, delimiters=(0,))
  with pytest.raises(ValueError, match="needs step delimiters"):
    local_acceptance(*args, potential=potential, num_samples=2, max_tries=2, max_new_tokens=T, delimiters=())


def test_local_acceptance_method_in_the_runner(tmp_path):
  """As an experiment method on the shipped models: with the exact checker, K = 1 is plain
  sampling, K = 6 redraws wrong steps (more draws per step, more tokens); the PRM is read, the
  checker is not."""
  import json
  from tts_jax.eval import Experiment, LocalAcceptanceSearch, run_experiment
  from tts_jax.tasks import ModChain
  exp = Experiment(name="la", task=ModChain(), split="hard", num_problems=4, models="default",
                   methods=(LocalAcceptanceSearch(verifier="oracle", max_tries=1, name="k1"),
                            LocalAcceptanceSearch(verifier="oracle", max_tries=6, name="k6"),
                            LocalAcceptanceSearch(verifier="prm", max_tries=3, name="prm")),
                   budgets=(4,), max_new_tokens=64, batch_problems=2, out_dir=str(tmp_path / "full"))
  run_experiment(exp, quiet=True)
  recs = [json.loads(x) for x in (tmp_path / "full" / "results.jsonl").read_text().splitlines()]
  rows = [r["methods"] for r in recs]
  assert all(m["k1"]["tries_per_step"] == 1.0 for m in rows)  # K = 1 is plain sampling
  assert np.mean([m["k6"]["tries_per_step"] for m in rows]) > 1.2  # wrong steps were redrawn
  assert all(1.0 <= m["k6"]["tries_per_step"] <= 6.0 for m in rows)
  assert np.mean([m["k6"]["generated_tokens"] for m in rows]) > np.mean([m["k1"]["generated_tokens"] for m in rows])
  assert all(m["prm"]["verifier_tokens"] > 0 and m["k6"]["verifier_tokens"] == 0 for m in rows)
  with pytest.raises(ValueError, match="max_tries must be an int >= 1"):
    Experiment(name="x", task=ModChain(), methods=(LocalAcceptanceSearch(max_tries=0),), budgets=(2,))
