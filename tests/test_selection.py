"""Selection rules: documented tie-breaking, aggregation, and each method's defining behaviour."""

import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.selection import (adaptive_consistency, best_index, encode_answers,
                               inverse_entropy_vote, majority_vote, prune_mask, rpc_select,
                               shortest_majority_vote, vote_totals, weighted_majority_vote)
from tts_jax.verifiers import aggregate_steps


def test_encode_answers_by_first_appearance():
  ids, vocab = encode_answers([["7", None, "3", "7"], [None, None, None, None]])
  np.testing.assert_array_equal(ids, [[0, -1, 1, 0], [-1, -1, -1, -1]])
  assert vocab == [["7", "3"], []]


def test_majority_ties_go_to_first_appearance_and_none_is_minus_one():
  a = jnp.array([[2, 1, 1, 2, 0], [0, 1, 1, 0, -1], [-1, -1, -1, -1, -1]])
  np.testing.assert_array_equal(majority_vote(a), [1, 0, -1])
  np.testing.assert_array_equal(vote_totals(a)[1], [2, 2, 0, 0, 0])


def test_votes_on_a_subset_of_a_pool_see_every_pool_id():
  # Ids come from a pool of 8; a 3-sample subset may hold ids >= 3.
  sub = jnp.array([[6, 6, 2]])
  np.testing.assert_array_equal(majority_vote(sub, num_answers=8), [6])
  np.testing.assert_array_equal(weighted_majority_vote(sub, jnp.array([[0.1, 0.1, 0.5]]), num_answers=8), [2])
  np.testing.assert_array_equal(adaptive_consistency(sub, 0.5, num_answers=8)[0], [6])


def test_weighted_vote_and_best_index():
  a = jnp.array([[0, 1, 1, 2]])
  np.testing.assert_array_equal(weighted_majority_vote(a, jnp.array([[0.9, 0.4, 0.4, 0.1]])), [0])
  np.testing.assert_array_equal(weighted_majority_vote(a, jnp.array([[0.5, 0.4, 0.4, 0.1]])), [1])
  np.testing.assert_array_equal(best_index(jnp.array([[0.1, 0.7, 0.7, 0.2]])), [1])  # first on ties
  np.testing.assert_array_equal(best_index(jnp.array([[0.1, 0.7, 0.7, 0.2]]), jnp.array([[1, 0, 0, 1]], bool)), [3])


def test_prm_aggregation():
  s = jnp.array([[0.9, 0.5, 0.8, 0.0]])
  m = jnp.array([[True, True, True, False]])
  assert float(aggregate_steps(s, m, "last")[0]) == pytest.approx(0.8)
  assert float(aggregate_steps(s, m, "min")[0]) == pytest.approx(0.5)
  assert float(aggregate_steps(s, m, "prod")[0]) == pytest.approx(0.36)
  assert float(aggregate_steps(s, m, "mean")[0]) == pytest.approx(2.2 / 3)
  assert float(aggregate_steps(s, jnp.zeros_like(m), "min")[0]) == 0.0
  with pytest.raises(ValueError, match="unknown PRM aggregation 'max'"):
    aggregate_steps(s, m, "max")


def test_inverse_entropy_and_shortest_majority():
  a = jnp.array([[0, 0, 1]])
  # Two unsure samples (entropy 2) lose to one sure sample (entropy 0.25): 1 + 1 < 4.
  np.testing.assert_array_equal(inverse_entropy_vote(a, jnp.array([[2.0, 2.0, 0.25]])), [1])
  np.testing.assert_array_equal(inverse_entropy_vote(a, jnp.array([[1.0, 1.0, 1.0]])), [0])
  # Answer 0: 2 votes, mean length 40 -> 0.05; answer 1: 1 vote, length 10 -> 0.1.
  np.testing.assert_array_equal(shortest_majority_vote(a, jnp.array([[40, 40, 10]])), [1])
  np.testing.assert_array_equal(shortest_majority_vote(a, jnp.array([[10, 10, 10]])), [0])


def test_adaptive_consistency_stops_early_on_agreement():
  unanimous = jnp.array([[3, 3, 3, 3, 3, 3, 3, 3, 3, 3]])
  chosen, used = adaptive_consistency(unanimous, threshold=0.95)
  # Beta(v+1, 1): P(p1 > 1/2) = 1 - 0.5^(v+1) > 0.95 first at v = 4.
  assert int(chosen[0]) == 3 and int(used[0]) == 4
  split = jnp.array([[0, 1, 0, 1, 0, 1, 0, 1]])
  chosen, used = adaptive_consistency(split, threshold=0.95)
  assert int(used[0]) == 8 and int(chosen[0]) == 0
  none = jnp.full((1, 5), -1)
  chosen, used = adaptive_consistency(none)
  assert int(chosen[0]) == -1 and int(used[0]) == 5


def test_rpc_pruning_and_distinct_paths():
  rng = np.random.default_rng(0)
  probs = np.concatenate([rng.uniform(0.6, 0.8, 20), rng.uniform(0.001, 0.02, 20)])
  keep = prune_mask(probs)
  assert keep[:20].all() and not keep[20:].any()
  # Answer 1 has more samples but all low-probability: pruned, answer 0 wins.
  answers = np.array([0] * 5 + [1] * 12)
  lp = np.log(np.concatenate([rng.uniform(0.6, 0.8, 5), rng.uniform(0.001, 0.02, 12)]))
  assert rpc_select(answers, lp) == 0
  assert rpc_select(answers, lp, prune=False) == 0  # perplexity consistency alone: 5 * 0.7 > 12 * 0.01
  # Identical completions count once: three copies of one path lose to two distinct paths.
  answers = np.array([0, 0, 0, 1, 1])
  lp = np.log(np.array([0.3, 0.3, 0.3, 0.2, 0.2]))
  assert rpc_select(answers, lp, sample_ids=np.array([0, 0, 0, 1, 2]), prune=False) == 1
  assert rpc_select(answers, lp, prune=False) == 0
  assert rpc_select(np.array([-1, -1]), np.zeros(2)) == -1
