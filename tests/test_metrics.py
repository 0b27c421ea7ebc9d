"""Metrics against exact values: pass@k, maj@k, best-of-N, the toy step policy."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.eval.pool_methods import BestOfN, MajorityVote, PassAtK
from tts_jax.eval.metrics import best_of_k_exact, bootstrap_ci, mean_pass_at_k, pass_at_k, subset_indices
from tts_jax.eval.pool import Pool
from tts_jax.selection import majority_vote


def test_pass_at_k_equals_brute_force_over_subsets():
  for n in range(1, 9):
    for c in range(n + 1):
      for k in range(1, n + 1):
        subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
        brute = np.mean([any(s) for s in subsets])
        assert abs(pass_at_k(n, c, k) - brute) < 1e-12


def test_pass_at_k_is_unbiased_for_one_minus_one_minus_p_to_the_k():
  rng = np.random.default_rng(0)
  p, n, trials = 0.2, 20, 20000
  c = rng.binomial(n, p, size=trials)
  for k in (1, 5, 20):
    est = np.array([pass_at_k(n, int(ci), k) for ci in c])
    truth = 1 - (1 - p) ** k
    assert abs(est.mean() - truth) < 4 * est.std() / math.sqrt(trials) + 1e-12, k
  # Stable for large n (the naive binomial ratio overflows).
  assert 0 < pass_at_k(10_000, 3, 50) < 1
  with pytest.raises(ValueError, match="need 0 <= c <= n"):
    pass_at_k(4, 5, 1)


def exact_majority_accuracy(pi, k):
  """P(the correct answer 0 wins a majority vote of k i.i.d. samples from pi); ties split evenly."""
  a = len(pi)
  total = 0.0
  for counts in itertools.product(range(k + 1), repeat=a):
    if sum(counts) != k:
      continue
    prob = math.factorial(k) * np.prod([pi[i] ** c / math.factorial(c) for i, c in enumerate(counts)])
    top = max(counts)
    if counts[0] == top and top > 0:
      total += prob / sum(1 for c in counts if c == top)
  return total


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_majority_vote_matches_exact_enumeration(k):
  pi = np.array([0.35, 0.3, 0.2, 0.15])  # the correct answer (id 0) barely leads
  trials = 40000
  rng = np.random.default_rng(k)
  draws = rng.choice(4, p=pi, size=(trials, k))
  # Ids by first appearance, as encode_answers gives them.
  ids = np.zeros_like(draws)
  for t in range(trials):
    seen = {}
    ids[t] = [seen.setdefault(x, len(seen)) for x in draws[t]]
  chosen = np.asarray(majority_vote(jnp.asarray(ids)))
  won = np.array([draws[t][list(ids[t]).index(chosen[t])] == 0 for t in range(trials)])
  exact = exact_majority_accuracy(pi, k)
  assert abs(won.mean() - exact) < 4 * math.sqrt(exact * (1 - exact) / trials), (won.mean(), exact)


def pool_from(answer_draws, correct_answer=0):
  p, n = answer_draws.shape
  ids = np.zeros_like(answer_draws)
  for t in range(p):
    seen = {}
    ids[t] = [seen.setdefault(x, len(seen)) for x in answer_draws[t]]
  correct = answer_draws == correct_answer
  z = np.zeros((p, n))
  return Pool(answers=ids.astype(np.int32), correct=correct, lengths=np.ones((p, n), np.int32), mean_entropy=z + 1,
              mean_logprob=z, seq_ids=np.tile(np.arange(n), (p, 1)), prompt_lens=np.ones(p, np.int32),
              orm=correct.astype(np.float32))


def test_maj_at_k_from_a_pool_is_the_subset_expectation():
  """maj@k estimated by subsets of pools of n = 12 equals the exact i.i.d. maj@k."""
  pi = np.array([0.4, 0.3, 0.3])
  rng = np.random.default_rng(3)
  pool = pool_from(rng.choice(3, p=pi, size=(3000, 12)))
  keys = jax.random.split(jax.random.key(0), 3000)
  for k in (3, 5):
    acc, used, mc_var = MajorityVote().evaluate_pool(pool, k, keys, 16)
    exact = exact_majority_accuracy(pi, k)
    se = acc.std() / math.sqrt(len(acc))
    assert abs(acc.mean() - exact) < 4 * se, (k, acc.mean(), exact)
    assert np.all(used == k) and np.all(mc_var >= 0)


def test_best_of_n_with_a_perfect_verifier_is_pass_at_n():
  rng = np.random.default_rng(4)
  correct = rng.random((500, 16)) < 0.15
  for k in (1, 3, 8, 16):
    np.testing.assert_allclose(best_of_k_exact(correct.astype(float), correct, k),
                               [pass_at_k(16, int(c), k) for c in correct.sum(1)], atol=1e-12)


def test_toy_step_policy_best_of_n_closed_form():
  """Each of K steps right w.p. q; a perfect verifier: best-of-N = 1 - (1 - q^K)^N."""
  q, K, n, P = 0.8, 5, 32, 4000
  rng = np.random.default_rng(5)
  correct = (rng.random((P, n, K)) < q).all(-1)
  pool = pool_from(np.where(correct, 0, 1))
  for N in (1, 4, 16, 32):
    acc, _, _ = BestOfN(verifier="orm").evaluate_pool(pool, N, None, 0)
    truth = 1 - (1 - q ** K) ** N
    # per-problem values lie in [0, 1] with mean `truth`: variance <= truth (1 - truth)
    assert abs(acc.mean() - truth) < 4 * math.sqrt(truth * (1 - truth) / P), (N, acc.mean(), truth)
    oracle, _, _ = PassAtK().evaluate_pool(pool, N, None, 0)
    np.testing.assert_allclose(acc, oracle, atol=1e-12)


def test_best_of_k_exact_against_enumeration_with_ties():
  rng = np.random.default_rng(6)
  scores = rng.integers(0, 3, size=(30, 6)).astype(float)
  correct = rng.random((30, 6)) < 0.5
  for k in (1, 2, 4, 6):
    brute = []
    for s, c in zip(scores, correct):
      vals = []
      for sub in itertools.combinations(range(6), k):
        best = max(s[list(sub)])
        top = [i for i in sub if s[i] == best]
        vals.append(np.mean(c[top]))
      brute.append(np.mean(vals))
    np.testing.assert_allclose(best_of_k_exact(scores, correct, k), brute, atol=1e-12)


def test_subsets_are_without_replacement_and_per_problem():
  keys = jax.random.split(jax.random.key(1), 3)
  idx = np.asarray(subset_indices(keys, 10, 4, 50))
  assert idx.shape == (3, 50, 4)
  assert all(len(set(row)) == 4 for row in idx.reshape(-1, 4))
  again = np.asarray(subset_indices(keys[1:2], 10, 4, 50))
  np.testing.assert_array_equal(idx[1], again[0])


def test_bootstrap_ci_covers_the_mean():
  x = np.random.default_rng(0).random(200)
  m, lo, hi = bootstrap_ci(x)
  assert lo < m < hi and hi - lo < 0.2
  assert mean_pass_at_k(np.array([[True, False], [False, False]]), 1) == 0.25
