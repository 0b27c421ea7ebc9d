"""Metrics against exact values: pass@k, maj@k, best-of-N, the toy step policy."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.eval.pool_methods import (AdaptiveConsistency, BestOfN, InverseEntropyVote, MajorityVote, PassAtK,
                                      ShortestMajority, WeightedMajority, _subset_ranks)
from tests import reference_metrics as ref
from tts_jax.eval.metrics import best_of_k_exact, bootstrap_ci, mean_pass_at_k, pass_at_k
from tts_jax.eval.subsets import enumerated_ranks, random_ranks, stable_order
from tts_jax.eval.pool import Pool
from tts_jax.selection import majority_vote


def test_pass_at_k_equals_brute_force_over_subsets():
  for n in range(1, 9):
    for c in range(n + 1):
      for k in range(1, n + 1):
        subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
        brute = np.mean([any(s) for s in subsets])
        assert abs(float(pass_at_k(n, c, k)) - brute) < 1e-6
        assert abs(ref.pass_at_k(n, c, k) - brute) < 1e-12


def test_pass_at_k_is_unbiased_for_one_minus_one_minus_p_to_the_k():
  rng = np.random.default_rng(0)
  p, n, trials = 0.2, 20, 20000
  c = rng.binomial(n, p, size=trials)
  for k in (1, 5, 20):
    est = np.asarray(pass_at_k(n, c, k), np.float64)  # vectorised over problems
    truth = 1 - (1 - p) ** k
    assert abs(est.mean() - truth) < 4 * est.std() / math.sqrt(trials) + 1e-12, k
  # Stable for large n (the naive binomial ratio overflows).
  assert 0 < float(pass_at_k(10_000, 3, 50)) < 1
  np.testing.assert_allclose(pass_at_k(10_000, 3, 50), ref.pass_at_k(10_000, 3, 50), rtol=1e-5)
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
  budgets = (3, 5)
  accs, useds, mc_vars = map(np.asarray, MajorityVote().evaluate_pool(pool, budgets, random_ranks(jnp.stack([keys, keys]), 12, 16)))
  for k, acc, used, mc_var in zip(budgets, accs, useds, mc_vars):
    exact = exact_majority_accuracy(pi, k)
    se = acc.std() / math.sqrt(len(acc))
    assert abs(acc.mean() - exact) < 4 * se, (k, acc.mean(), exact)
    assert np.all(used == k) and np.all(mc_var >= 0)


def test_best_of_n_with_a_perfect_verifier_is_pass_at_n():
  rng = np.random.default_rng(4)
  correct = rng.random((500, 16)) < 0.15
  for k in (1, 3, 8, 16):
    np.testing.assert_allclose(best_of_k_exact(correct.astype(float), correct, k),
                               pass_at_k(16, correct.sum(1), k), atol=1e-6)


def test_toy_step_policy_best_of_n_closed_form():
  """Each of K steps right w.p. q; a perfect verifier: best-of-N = 1 - (1 - q^K)^N."""
  q, K, n, P = 0.8, 5, 32, 4000
  rng = np.random.default_rng(5)
  correct = (rng.random((P, n, K)) < q).all(-1)
  pool = pool_from(np.where(correct, 0, 1))
  budgets = (1, 4, 16, 32)
  accs = np.asarray(BestOfN(verifier="orm").evaluate_pool(pool, budgets, None)[0], np.float64)
  oracles = np.asarray(PassAtK().evaluate_pool(pool, budgets, None)[0], np.float64)
  for N, acc, oracle in zip(budgets, accs, oracles):
    truth = 1 - (1 - q ** K) ** N
    # per-problem values lie in [0, 1] with mean `truth`: variance <= truth (1 - truth)
    assert abs(acc.mean() - truth) < 4 * math.sqrt(truth * (1 - truth) / P), (N, acc.mean(), truth)
    np.testing.assert_allclose(acc, oracle, atol=1e-6)


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
    np.testing.assert_allclose(best_of_k_exact(scores, correct, k), brute, atol=1e-6)
    np.testing.assert_allclose(ref.best_of_k_exact(scores, correct, k), brute, atol=1e-12)


def test_subsets_are_without_replacement_and_per_problem():
  keys = jax.random.split(jax.random.key(1), 3)
  ranks = np.asarray(random_ranks(keys, 10, 50))
  assert ranks.shape == (3, 50, 10)
  assert all(sorted(row) == list(range(10)) for row in ranks.reshape(-1, 10))  # orders: every k-prefix is a k-subset
  again = np.asarray(random_ranks(keys[1:2], 10, 50))
  np.testing.assert_array_equal(ranks[1], again[0])
  # Orders are uniform: the first sample is each of the 10 equally often.
  first = np.asarray(random_ranks(jax.random.split(jax.random.key(2), 400), 10, 50)).argmin(-1).ravel()
  counts = np.bincount(first, minlength=10)
  assert np.all(np.abs(counts - 2000) < 5 * np.sqrt(2000 * 0.9)), counts


@pytest.mark.parametrize("n", [1, 2, 7, 64, 512, 513])
def test_subset_orders_are_the_stable_argsort_of_the_uniforms(n):
  """`stable_order` packs (u, index) into one integer to sort: the same order as a stable
  argsort, on jax's uniforms (multiples of 2^-23, the packing's premise) and on ties."""
  u = jax.random.uniform(jax.random.key(n), (400, n))
  scaled = np.asarray(u, np.float64) * 2.0 ** 23
  np.testing.assert_array_equal(scaled, np.floor(scaled))  # the premise: 23-bit draws
  coarse = jnp.floor(u * 4) / 4  # many ties: at most 4 distinct values per row
  for x in (u, coarse):
    np.testing.assert_array_equal(stable_order(x), np.argsort(np.asarray(x), axis=-1, kind="stable"))
  if n == 512:  # real ties among the 23-bit draws themselves, not only forced ones
    assert sum(len(np.unique(r)) < n for r in np.asarray(u)) > 0


def test_enumerated_subsets_are_all_c_n_k_once():
  ranks, weights = enumerated_ranks(6, 3, 25)
  members = {tuple(np.flatnonzero(r < 3)) for r in ranks[weights > 0]}
  assert len(members) == math.comb(6, 3) == int(weights.sum())
  assert all(sorted(r) == list(range(6)) for r in ranks)
  with pytest.raises(ValueError, match="do not fit"):
    enumerated_ranks(6, 3, 19)


def test_pool_metrics_equal_the_host_references_on_random_pools():
  """pass@k and best-of-k (with score ties) as array code equal the float64 host versions."""
  rng = np.random.default_rng(7)
  correct = rng.random((40, 12)) < 0.3
  correct[0] = False
  correct[1] = True
  scores = rng.integers(0, 4, (40, 12)).astype(np.float32)
  budgets = (1, 2, 5, 12)
  acc = np.asarray(PassAtK().evaluate_pool(pool_from(np.where(correct, 0, 1)), budgets, None)[0])
  for b, k in enumerate(budgets):
    np.testing.assert_allclose(acc[b], [ref.pass_at_k(12, int(c), k) for c in correct.sum(1)], atol=1e-6)
    np.testing.assert_allclose(best_of_k_exact(scores, correct, k), ref.best_of_k_exact(scores, correct, k),
                               atol=1e-6)


def test_bootstrap_ci_covers_the_mean():
  x = np.random.default_rng(0).random(200)
  m, lo, hi = bootstrap_ci(x)
  assert lo < m < hi and hi - lo < 0.2
  assert mean_pass_at_k(np.array([[True, False], [False, False]]), 1) == 0.25


def test_pool_votes_equal_the_host_references_subset_by_subset():
  """Every vote method's array code (all budgets in one call, votes as one matmul per pool,
  adaptive SC as one scan) equals a plain host loop over the same subsets: ties, samples
  without an answer, and a problem where no sample has one."""
  rng = np.random.default_rng(11)
  p, n, s = 7, 10, 16
  answers = rng.integers(-1, 3, (p, n)).astype(np.int32)
  answers[0] = -1  # no answer anywhere
  answers[1] = [0, 1] * 5  # exact ties at every even budget
  pool = Pool(answers=answers, correct=rng.random((p, n)) < 0.5, lengths=rng.integers(1, 5, (p, n)).astype(np.int32),
              mean_entropy=rng.choice([0.5, 1.0, 2.0], (p, n)), mean_logprob=np.zeros((p, n)),
              seq_ids=np.tile(np.arange(n), (p, 1)), prompt_lens=np.ones(p, np.int32),
              orm=rng.choice([0.25, 0.5, 1.0], (p, n)).astype(np.float32))
  budgets = (1, 2, 3, 10)
  ranks = random_ranks(jax.random.split(jax.random.key(5), len(budgets) * p).reshape(len(budgets), p), n, s)
  rules = {
      MajorityVote(): lambda a, i: ref.vote(a),
      WeightedMajority(verifier="orm"): lambda a, i: ref.vote(a, pool.orm[i]),
      InverseEntropyVote(): lambda a, i: ref.vote(a, 1.0 / pool.mean_entropy[i]),
      ShortestMajority(): lambda a, i: ref.shortest_vote(a, pool.lengths[i]),
  }
  threshold = 0.9
  rules[AdaptiveConsistency(threshold=threshold)] = None
  for method, rule in rules.items():
    full, weights, _ = _subset_ranks(method.order_free, budgets, ranks)
    full = np.asarray(full)
    acc, used, _ = map(np.asarray, method.evaluate_pool(pool, budgets, ranks))
    for b, k in enumerate(budgets):
      for i in range(p):
        outs, uses = [], []
        for j in range(s):
          order = np.argsort(full[b, i, j])  # pool indices in drawing order
          if isinstance(method, AdaptiveConsistency):
            chosen, u = ref.adaptive(answers[i][order], threshold, k)
          else:
            members = order[:k]
            chosen, u = rule(np.where(np.isin(np.arange(n), members), answers[i], -1), i), k
          outs.append(ref.first_correct(answers[i][order[:u]], pool.correct[i][order[:u]], chosen))
          uses.append(u)
        w = weights[b]
        np.testing.assert_allclose(acc[b, i], np.dot(w, outs) / w.sum(), atol=1e-6, err_msg=f"{method.name} k={k} {i}")
        np.testing.assert_allclose(used[b, i], np.dot(w, uses) / w.sum(), atol=1e-5, err_msg=f"{method.name} k={k} {i}")
