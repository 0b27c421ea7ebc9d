"""Compute-optimal allocation: the fitted plan is the exhaustive optimum, the jitted evaluation
equals a host loop over (problem, subset), and in the runner the uniform control with one rule
is exactly majority vote."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.eval import BeamSearch
from tts_jax.eval.allocation import ComputeOptimal, fit_allocation
from tts_jax.eval.pool import Pool


def _brute_force(d, o, grid, budget, bins, allowed=None):
  """Best (accuracy, spend) over every (budget, rule) per quantile bin, by enumeration
  (budgets: the grid indices `allowed`, default all)."""
  edges = np.unique(np.quantile(d, np.arange(1, bins) / bins))
  which = np.searchsorted(edges, d, side="right")
  groups = [which == b for b in range(len(edges) + 1)]
  best = (-1.0, 0.0)
  choices = [(g, r) for g in (range(len(grid)) if allowed is None else allowed) for r in range(o.shape[1])]
  for combo in itertools.product(choices, repeat=len(groups)):
    spend = sum(grid[g] * m.mean() for (g, _), m in zip(combo, groups))
    value = sum(o[g, r, m].sum() for (g, r), m in zip(combo, groups)) / len(d)
    if spend <= budget + 1e-9 and value > best[0] + 1e-12:
      best = (value, spend)
  return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_allocation_is_the_exhaustive_optimum(seed):
  rng = np.random.default_rng(seed)
  grid = np.array([2, 4, 8, 16])
  m = 60
  d = rng.integers(0, 5, m) / 4.0  # ties: quantile edges merge
  # Accuracy rises with the budget, faster for easy draws; rule 1 is better on hard draws only.
  p = np.clip(d[None, None, :] * 0.8 + 0.05 * np.log2(grid)[:, None, None]
              + np.array([0.0, 0.1])[None, :, None] * (d < 0.5), 0, 1)
  o = (rng.random((len(grid), 2, m)) < p).astype(float)
  for budget in (2, 5, 8, 16):
    for bins in (1, 2, 3):
      plan = fit_allocation(d, o, grid, budget, bins)
      uniform = [int(np.flatnonzero(grid <= budget)[-1])]  # one bin: the budget itself
      want, _ = _brute_force(d, o, grid, budget, bins, uniform if bins == 1 else None)
      assert plan.accuracy == pytest.approx(want, abs=1e-12)
      assert (plan.freq * plan.budgets).sum() <= budget + 1e-9
      assert plan.freq.sum() == pytest.approx(1.0)


def test_fit_allocation_moves_budget_to_hard_problems():
  """Easy draws are solved at the probe, hard ones gain with budget: the plan gives the easy
  bin the probe and the hard bin the rest; one bin gives everyone the budget."""
  grid = np.array([2, 4, 8, 16])
  d = np.repeat([0.0, 1.0], 50)
  o = np.zeros((4, 1, 100))
  o[:, :, 50:] = 1.0  # easy: always right
  o[:, :, :50] = np.array([0.1, 0.2, 0.4, 0.6])[:, None, None]  # hard: better with more samples
  plan = fit_allocation(d, o, grid, budget=8, bins=2)
  assert list(plan.budgets) == [8, 8] and plan.accuracy == pytest.approx(0.7)  # ties [8, 2]: the budget is spent
  plan = fit_allocation(d, o, grid, budget=9, bins=2)
  assert list(plan.budgets) == [16, 2] and plan.accuracy == pytest.approx(0.8)
  uniform = fit_allocation(d, o, grid, budget=9, bins=1)
  assert list(uniform.budgets) == [8] and uniform.accuracy == pytest.approx(0.7)
  with pytest.raises(ValueError, match="below the smallest grid budget"):
    fit_allocation(d, o, grid, budget=1, bins=2)


def _host_reference(method, pool, rank, edges, budgets, rules, search_out=None, grid=None):
  """Accuracy, mean budget, mean pool samples per problem and the share of subsets running
  each search at each grid budget, by a loop over subsets (rank int[P, S, n]; rule ids past
  the pool rules read search_out[grid index, search, problem])."""
  p, s, _ = rank.shape
  acc, used, pool_used = np.zeros(p), np.zeros(p), np.zeros(p)
  runs = np.zeros((p, len(method.searches), 0 if grid is None else len(grid)))
  for i in range(p):
    for j in range(s):
      order = np.argsort(rank[i, j])
      probe = order[:method.probe]
      if method.difficulty == "agreement":
        ans = pool.answers[i, probe]
        ans = ans[ans >= 0]
        d = np.bincount(ans).max() / method.probe if ans.size else 0.0
      else:
        d = pool.orm[i, probe].mean()
      b = budgets[i][int(np.sum(edges[i] <= np.float32(d)))]
      rid = rules[i][int(np.sum(edges[i] <= np.float32(d)))]
      rule = method.rule_names()[rid]
      members = order[:b]
      if rid >= len(method.rules):  # a search with b - probe particles
        gi = list(grid).index(b)
        ok = search_out[gi, rid - len(method.rules), i]
        runs[i, rid - len(method.rules), gi] += 1 / s
        pool_used[i] += method.probe / s
      elif rule == "best-orm":
        top = min(members[pool.orm[i, members] == pool.orm[i, members].max()])  # first pool index on ties
        ok = pool.correct[i, top]
      else:
        w = np.ones(b) if rule == "majority" else pool.orm[i, members]
        totals = {}
        for a, x in zip(pool.answers[i, members], w):
          if a >= 0:
            totals[a] = totals.get(a, 0.0) + x
        if not totals:
          ok = False
        else:
          top = max(totals.values())
          chosen = min(a for a, t in totals.items() if t == top)
          ok = pool.correct[i, next(k for k in members if pool.answers[i, k] == chosen)]
      acc[i] += ok / s
      used[i] += b / s
      pool_used[i] += b / s if rid < len(method.rules) else 0.0
  return acc, used, pool_used, runs


@pytest.mark.parametrize("difficulty", ["orm", "agreement"])
def test_plan_evaluation_equals_a_host_loop(difficulty):
  rng = np.random.default_rng(3)
  p, n, s = 4, 8, 6
  answers = rng.integers(-1, 3, (p, n)).astype(np.int32)  # few answers: ties, some missing
  correct = (answers == 0) & (rng.random((p, n)) < 0.9)
  orm = rng.choice([0.125, 0.25, 0.5, 0.75], (p, n)).astype(np.float32)  # dyadic: exact sums, real ties
  pool = Pool(answers=answers, correct=correct, lengths=np.ones((p, n), np.int32),
              mean_entropy=np.ones((p, n), np.float32), mean_logprob=np.zeros((p, n), np.float32),
              seq_ids=np.arange(n)[None].repeat(p, 0).astype(np.int32), prompt_lens=np.ones(p, np.int32), orm=orm)
  method = ComputeOptimal(probe=2, difficulty=difficulty, bins=3, rules=("majority", "weighted-orm", "best-orm"),
                          searches=(BeamSearch(verifier="oracle", expansions=2, name="beam"),))
  rank = np.stack([np.stack([rng.permutation(n) for _ in range(s)]) for _ in range(p)]).astype(np.int32)
  edges = np.array([[0.3, 0.6], [0.5, np.inf], [0.2, 0.8], [0.45, 0.75]], np.float32)
  budgets = np.array([[8, 4, 2], [6, 3, 3], [2, 8, 5], [7, 7, 2]], np.int32)
  rules = np.array([[0, 3, 2], [2, 0, 0], [3, 2, 0], [2, 2, 3]], np.int32)  # 3: the search (at grid budgets)
  grid = method.grid((8,))
  search_out = rng.integers(0, 2, (len(grid), 1, p)).astype(np.float32)

  class Plan:
    def __init__(self, i):
      self.edges, self.budgets, self.rules = edges[i], budgets[i], rules[i]

  # The method picks plan (parity, budget); make parity 0 / 1 the problems' own plans in two calls.
  got = [np.zeros(p), np.zeros(p), np.zeros(p), np.zeros((p, 1, len(grid)))]
  for i in range(p):
    one = Pool(**{k: (None if v is None else v[i:i + 1]) for k, v in vars(pool).items()})
    acc, used, _, pool_used, runs = method.evaluate_pool(one, (8,), jnp.asarray(rank[None, i:i + 1]),
                                                         {(0, 8): Plan(i), (1, 8): Plan(i)}, 0, search_out[:, :, i:i + 1])
    for g, x in zip(got, (acc, used, pool_used, runs)):
      g[i] = np.asarray(x)[0, 0]
  want = _host_reference(method, pool, rank, edges, budgets, rules, search_out, grid)
  for name, g, w in zip(("accuracy", "samples", "pool samples", "search runs"), got, want):
    np.testing.assert_allclose(g, w, atol=1e-6, err_msg=name)
  assert want[3].sum() > 0  # some subsets ran the search


def test_compute_optimal_in_the_runner(tmp_path):
  """On the shipped models: the uniform control with majority vote as its only rule is exactly
  majority vote (same subsets); the adaptive plan spends about the budget on average; results
  survive a resume; bad settings are refused when the experiment is built."""
  import dataclasses
  from tests.helpers import without_timing
  from tts_jax.eval import Experiment, MajorityVote, run_experiment
  from tts_jax.tasks import ModChain
  exp = Experiment(name="co", task=ModChain(), split="test", num_problems=6, models="default",
                   methods=(MajorityVote(),
                            ComputeOptimal(probe=2, bins=1, rules=("majority",), name="uniform"),
                            ComputeOptimal(probe=2, bins=2, difficulty="agreement", name="adaptive"),
                            ComputeOptimal(probe=2, bins=2, difficulty="agreement", name="adaptive+beam",
                                           searches=(BeamSearch(verifier="oracle", expansions=2, name="beam"),))),
                   budgets=(2, 4, 8), max_new_tokens=64, num_subsets=8, batch_problems=3,
                   out_dir=str(tmp_path / "full"))
  full = run_experiment(exp, quiet=True)
  rows = {(name, r["budget"]): r for name, rs in full["methods"].items() for r in rs}
  for k in (4, 8):  # C(8, 4) > 8 subsets: majority vote is Monte Carlo on the same ranks
    assert rows["uniform", k]["accuracy"] == rows["majority vote", k]["accuracy"]
    assert rows["uniform", k]["samples"] == k
  for k in (2, 4, 8):
    assert 2 <= rows["adaptive", k]["samples"] <= 8 and 2 <= rows["adaptive+beam", k]["samples"] <= 8
  # The searches a bin may run: beam search with the bin's budget less the probe (4 -> N=2, 8 -> N=6),
  # once per problem; its calibration outcomes are those runs.
  from tts_jax.eval.batch import Batch
  from tts_jax.tasks import load_default
  method, models = exp.methods[3], load_default("modchain")
  batch = Batch(experiment=exp, models=models, problems=list(exp.task.split("test")[:3]), start=0)
  _, o = method.calibration(batch, 3)
  grid = list(method.grid(exp.budgets))
  assert o.shape == (len(grid), 4, 6, 8) and np.all(o[grid.index(2), 3] == -1)  # N = 0: cannot run
  for g, n in ((4, 2), (8, 6)):
    direct = method.searches[0].evaluate_budget(batch, n, method._search_index(3, 0))
    np.testing.assert_array_equal(o[grid.index(g), 3, :3, 0], [x.accuracy for x in direct])
  cut = dataclasses.replace(exp, out_dir=str(tmp_path / "cut"))
  run_experiment(cut, stop_after_batches=1, quiet=True)
  assert without_timing(run_experiment(cut, quiet=True)) == without_timing(full)
  for bad, msg in ((dict(probe=4), "probe=4 must be in"), (dict(bins=0), "bins must be"),
                   (dict(rules=("vote",)), "unknown rules"), (dict(difficulty="len"), "difficulty must be"),
                   (dict(probe=2, searches=(MajorityVote(),)), "searches must be search methods"),
                   (dict(probe=2, searches=(BeamSearch(verifier="exact"),)), "verifier must be 'prm' or 'oracle'")):
    with pytest.raises(ValueError, match=msg):
      Experiment(name="x", task=ModChain(), methods=(ComputeOptimal(**bad),), budgets=(2, 4))
  with pytest.raises(ValueError, match="cannot run at any budget"):  # grid (2,), probe 2: N = 0
    ComputeOptimal(probe=2, searches=(BeamSearch(),)).check_budgets((2,))
