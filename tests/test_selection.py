"""Selection rules: documented tie-breaking, aggregation, and each method's defining behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.selection import (adaptive_consistency, best_index, encode_answers,
                               inverse_entropy_vote, majority_vote, prune_mask, rpc_vote,
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
  keep = np.asarray(prune_mask(probs))
  assert keep[:20].all() and not keep[20:].any()
  # Answer 1 has more samples but all low-probability: pruned, answer 0 wins.
  answers = np.array([0] * 5 + [1] * 12)
  lp = np.log(np.concatenate([rng.uniform(0.6, 0.8, 5), rng.uniform(0.001, 0.02, 12)]))
  assert int(rpc_vote(answers, lp)) == 0
  assert int(rpc_vote(answers, lp, prune=False)) == 0  # perplexity consistency alone: 5 * 0.7 > 12 * 0.01
  # Identical completions count once: three copies of one path lose to two distinct paths.
  answers = np.array([0, 0, 0, 1, 1])
  lp = np.log(np.array([0.3, 0.3, 0.3, 0.2, 0.2]))
  assert int(rpc_vote(answers, lp, sample_ids=np.array([0, 0, 0, 1, 2]), prune=False)) == 1
  assert int(rpc_vote(answers, lp, prune=False)) == 0
  assert int(rpc_vote(np.array([-1, -1]), np.zeros(2))) == -1


def _stable_nll(theta, x):
  """Float64 log-space NLL of a Weibull mixture (no overflow at spiky parameters)."""
  from scipy.special import logsumexp  # noqa: PLC0415
  w, k1, l1, k2, l2 = np.asarray(theta, np.float64)
  lp = lambda k, lam: np.log(k) - np.log(lam) + (k - 1) * np.log(x / lam) - np.exp(np.clip(k * np.log(x / lam), None, 700))
  return -logsumexp(np.stack([np.log(w) + lp(k1, l1), np.log1p(-w) + lp(k2, l2)]), axis=0).sum()


def _random_prob_pools(rng, count, n):
  """Sample probabilities of the three shapes RPC meets: uniform, two clusters, exp(-Exp(1))."""
  out = []
  for t in range(count):
    if t % 3 == 0:
      out.append(rng.uniform(0.001, 1, n))
    elif t % 3 == 1:
      out.append(np.concatenate([rng.uniform(0.5, 0.9, n // 2), rng.uniform(0.001, 0.05, n - n // 2)]))
    else:
      out.append(np.exp(-rng.exponential(1.0, n)))
  return np.array(out)


@pytest.mark.parametrize("n", [4, 16, 64])
def test_rpc_weibull_fit_is_at_least_as_good_as_scipy(n):
  """The batched EM fit (fixed iterations, 12 starts; one call fits every row) against the
  host reference's scipy L-BFGS-B (numerical gradients) from its single start, both judged
  in float64."""
  from scipy.optimize import minimize  # noqa: PLC0415

  from tests.reference_rpc import _mixture_nll  # noqa: PLC0415
  from tts_jax.selection import fit_weibull_mixture  # noqa: PLC0415
  xs = np.clip(_random_prob_pools(np.random.default_rng(n), 60, n), 1e-12, None)
  ours = np.asarray(jax.jit(fit_weibull_mixture)(jnp.asarray(xs, jnp.float32)), np.float64)  # [60, 5]
  gaps = []
  for x, theta in zip(xs, ours):
    ref = minimize(_mixture_nll, [0.5, 1.0, 1.0, 1.5, 2.0], args=(x,), bounds=[(0.2, 0.8)] + [(0.01, None)] * 4)
    gaps.append(_stable_nll(theta, x) - _stable_nll(ref.x, x))
  gaps = np.array(gaps)
  assert gaps.max() <= 0.05, gaps.max()  # never meaningfully worse (float32 vs float64)
  # and often better where the likelihood is degenerate (few points: spikes), from its
  # several starts; at n = 64 both mostly reach the same optimum.
  assert (gaps < -1e-3).sum() >= (2 if n == 64 else 20)


def test_rpc_weibull_fit_of_masked_rows_is_the_fit_of_their_members():
  """A row fitted with a 0/1 mask (how RPC fits a subset inside a pool), in a batch, reaches
  the likelihood of fitting its members alone, one call per row; vmapped calls agree too."""
  from tts_jax.selection import fit_weibull_mixture  # noqa: PLC0415
  rng = np.random.default_rng(7)
  xs = np.clip(_random_prob_pools(rng, 30, 16), 1e-12, None).astype(np.float32)
  masks = rng.random(xs.shape) < 0.6
  masks[:, :4] = True  # >= 4 members
  fit = jax.jit(fit_weibull_mixture)
  batched = np.asarray(fit(xs, masks.astype(np.float32)), np.float64)
  vmapped = np.asarray(jax.jit(jax.vmap(fit_weibull_mixture))(xs, masks.astype(np.float32)), np.float64)
  for x, m, theta, theta_v in zip(xs, masks, batched, vmapped):
    alone = np.asarray(fit(x[m]), np.float64)
    best = _stable_nll(alone, x[m].astype(np.float64))
    for t in (theta, theta_v):
      assert abs(_stable_nll(t, x[m].astype(np.float64)) - best) <= 1e-3 * max(1.0, abs(best))


def test_rpc_on_device_equals_the_host_reference():
  """Random pools with ties, answers missing, duplicate completions and all-invalid rows:
  the jitted, vmapped RPC picks what the host reference picks (prune off: exact rule;
  prune on: wherever both fits prune the same samples)."""
  from tests.reference_rpc import prune_mask as ref_prune  # noqa: PLC0415
  from tests.reference_rpc import rpc_select  # noqa: PLC0415
  rng = np.random.default_rng(3)
  p, n = 60, 8
  answers = rng.integers(-1, 3, (p, n))
  answers[0] = -1
  answers[1] = [0, 1, 0, 1, 2, 2, -1, -1]  # a three-way tie in counts
  seq = rng.integers(0, 5, (p, n))
  seq = np.where(answers >= 0, seq * 10 + answers, 100 + np.arange(n))  # equal ids -> equal answers
  probs = _random_prob_pools(rng, p, n)
  probs = np.take_along_axis(probs, np.argsort(seq, axis=1, kind="stable"), 1)  # equal text -> equal prob
  first = {}
  for i in range(p):
    for j in range(n):
      probs[i, j] = first.setdefault((i, seq[i, j]), probs[i, j])
  lp = np.log(probs)
  for prune in (False, True):
    got = np.asarray(jax.jit(rpc_vote, static_argnames="prune")(answers, lp, seq, prune=prune))
    ref = np.array([rpc_select(answers[i], lp[i], seq[i], prune) for i in range(p)])
    if prune:
      ours = np.asarray(jax.jit(prune_mask)(jnp.exp(jnp.asarray(lp, jnp.float32))))  # as inside rpc_vote
      same = np.array([(ref_prune(probs[i]) == ours[i]).all() for i in range(p)])
      # The fits differ (ours is never worse in likelihood, often better), so the pruned
      # sets differ on part of these degenerate pools (many equal probabilities).
      assert same.mean() > 0.3
      np.testing.assert_array_equal(got[same], ref[same])
    else:
      np.testing.assert_array_equal(got, ref)
  assert got[0] == -1


def test_rpc_programs_compile_with_ynnpack_kept_to_matmuls():
  """On CPU the fits compile with XLA's own fusions for everything but matmuls
  (`rpc_compiler_options`; YNNPACK's reduction fusions run the EM ~2.5x slower), and so does
  the experiments' RPC program. The options change only the float order of the fit: both
  compiles reach the same likelihood."""
  from tests.test_metrics import pool_from  # noqa: PLC0415
  from tts_jax.eval import pool_methods  # noqa: PLC0415
  from tts_jax.eval.subsets import random_ranks  # noqa: PLC0415
  from tts_jax.selection import fit_weibull_mixture, rpc_compiler_options  # noqa: PLC0415
  if jax.default_backend() != "cpu":
    assert rpc_compiler_options() == {}
    return
  options = rpc_compiler_options()
  if not options:  # the fallback: only where this XLA rejects the option
    from tts_jax.selection.rpc import _CPU_OPTIONS  # noqa: PLC0415
    with pytest.raises(jax.errors.JaxRuntimeError):
      jax.jit(lambda x: x, compiler_options=_CPU_OPTIONS).lower(jax.ShapeDtypeStruct((), jnp.float32)).compile()
    return
  assert options == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
  xs = jnp.asarray(np.clip(_random_prob_pools(np.random.default_rng(5), 48, 8), 1e-12, None), jnp.float32)
  default, ours = jax.jit(fit_weibull_mixture).lower(xs).compile(), jax.jit(
      fit_weibull_mixture, compiler_options=options).lower(xs).compile()
  assert "ynn_fusion" in default.as_text() and "ynn_fusion" not in ours.as_text()
  for a, b, x in zip(np.asarray(default(xs), np.float64), np.asarray(ours(xs), np.float64), np.asarray(xs, np.float64)):
    assert abs(_stable_nll(a, x) - _stable_nll(b, x)) <= 1e-3 * max(1.0, abs(_stable_nll(a, x)))
  # The experiments' program (`RPC.evaluate_pool`: every budget, subsets gathered, voted).
  rng = np.random.default_rng(6)
  pool = pool_from(rng.integers(0, 3, (8, 16)))
  pool.mean_logprob = np.log(rng.uniform(0.01, 1.0, (8, 16))).astype(np.float32)
  budgets = (1, 8, 16)
  ranks, weights, exact = pool_methods._subset_ranks(
      True, budgets, random_ranks(jax.random.split(jax.random.key(0), 24).reshape(3, 8), 16, 8))
  args = (pool_methods._arrays(pool, pool_methods.RPC()), ranks, jnp.asarray(weights), jnp.asarray(exact))
  static = dict(ks=budgets, caps=(8, 8, 1), prune=True)
  program = pool_methods._rpc_program().lower(*args, **static).compile().as_text()
  plain = jax.jit(pool_methods._rpc_all_budgets, static_argnames=tuple(static)).lower(*args, **static).compile()
  assert "ynn_fusion" in plain.as_text() and "ynn_fusion" not in program
