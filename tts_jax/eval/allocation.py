"""Compute-optimal allocation (Snell et al. 2024) as a pool method: each problem's budget and
selection rule follow from its predicted difficulty.

The first `probe` samples of a problem (in a subset's drawing order) predict its difficulty:
the mean verifier probability of the probe ("orm", "prm": Snell et al.'s verifier-predicted
difficulty) or the share of the probe agreeing on the modal answer ("agreement"). The
score falls in one of `bins` quantile bins; each bin has its own per-problem budget b >= probe
(the probe samples are part of it: the rule reads the first b samples) and its own selection
rule (majority vote, weighted majority, best-of-N), chosen to maximise the expected accuracy
at experiment budget N under the average-budget constraint sum_bins freq(bin) * b(bin) <= N.

Fitting (`fit_allocation`) needs problems other than the ones it is used on: 2-fold
cross-fitting over the experiment's problems, as Snell et al. did on MATH (2-fold
cross-validation): a problem's plan is fitted on the problems of the other parity (index in
the split mod 2), never on itself. It draws the pools of all the experiment's problems once
per run, before the first batch is evaluated (the same pools the run uses: identical keys and
compiled code); that one-off compute shows in the time breakdown and is not charged to the
per-problem cost (it plays the part of hyper-parameter tuning). The realised budget of a
problem varies around N (the frequencies are the calibration problems'), so `samples` and
the FLOPs report what was spent. Verifier compute is charged for every sample used (the
probe needs it; a majority-vote bin then pays for scores it does not read).

bins=1 is the control: uniform allocation, every problem N samples and the single rule
best on the calibration problems.

Search as a bin's method (`searches`, e.g. beam search against the PRM, as Snell et al.
choose between best-of-N and beam search per difficulty): a bin of budget b may instead
spend its remaining b - probe samples' worth on a search method (`SearchMethod`) run with
N = b - probe particles (budgets the method cannot run are never chosen). Each problem's
search runs at every grid budget are drawn once per run, with the calibration pools, and
used both to fit the plans and to evaluate them; a problem in a search bin reports the
accuracy of its search and the cost of its probe plus its search.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.eval.batch import Batch
from tts_jax.eval.method import Outcome
from tts_jax.eval.pool import Pool
from tts_jax.eval.pool_methods import PoolMethod, _outcome, _summarise, _vote

RULES = ("majority", "weighted-orm", "weighted-prm", "best-orm", "best-prm")
Difficulty = Literal["orm", "prm", "agreement"]


@dataclasses.dataclass(frozen=True)
class AllocationPlan:
  """The fitted policy at one average budget N: bin edges float[bins - 1] (a difficulty score
  d falls in bin #{edges <= d}; +inf pads unused edges), and per bin its budget int[bins] and
  rule index int[bins] (into the method's `rules`), its calibration frequency and accuracy."""

  edges: np.ndarray
  budgets: np.ndarray
  rules: np.ndarray
  freq: np.ndarray
  accuracy: float

  def describe(self, rule_names) -> str:
    parts = [f"bin {i} ({f:.0%}): {rule_names[r]} x {b}"
             for i, (f, b, r) in enumerate(zip(self.freq, self.budgets, self.rules)) if f > 0]
    return "; ".join(parts) + f" (calibration accuracy {self.accuracy:.3f})"


def fit_allocation(difficulty: np.ndarray, outcomes: np.ndarray, grid, budget: float, bins: int) -> AllocationPlan:
  """The plan that maximises calibration accuracy at average budget <= `budget`.

  difficulty: float[M] the probe's score of M calibration draws (problem x subset);
  outcomes: float[G, R, M] correctness of each rule (R) at each grid budget (G, `grid`) on
  each draw; bins: quantile bins of the difficulty (equal quantiles merge, so fewer bins may
  be used). Exhaustive over the grid^bins budget choices; each bin takes its best rule at its
  budget. With bins = 1 the budget is the largest grid value <= `budget` (uniform allocation:
  only the rule is chosen). Ties go to the larger average budget (the budget is there to be spent; equal
  calibration accuracies are sampling noise), then to the lower budgets in bin order.
  """
  difficulty, outcomes, grid = np.asarray(difficulty, np.float64), np.asarray(outcomes, np.float64), np.asarray(grid)
  m = difficulty.shape[0]
  if outcomes.shape[0] != len(grid) or outcomes.shape[2] != m:
    raise ValueError(f"outcomes {outcomes.shape} must be [grid {len(grid)}, rules, draws {m}]")
  if budget < grid.min():
    raise ValueError(f"budget {budget} is below the smallest grid budget {grid.min()}")
  edges = np.unique(np.quantile(difficulty, np.arange(1, bins) / bins)) if bins > 1 else np.zeros(0)
  which = np.searchsorted(edges, difficulty, side="right")
  used = len(edges) + 1
  freq = np.bincount(which, minlength=used) / m
  acc = np.stack([outcomes[:, :, which == b].mean(-1) if freq[b] > 0 else np.zeros(outcomes.shape[:2])
                  for b in range(used)])  # [bins, G, R]
  best_rule, best_acc = acc.argmax(-1), acc.max(-1)  # [bins, G]
  if bins == 1:  # uniform allocation: every draw gets the budget (the largest grid value within it)
    combos = np.array([[int(np.flatnonzero(grid <= budget)[-1])]])
  else:
    combos = np.array(list(itertools.product(range(len(grid)), repeat=used)))  # [C, bins]
  spend = (grid[combos] * freq).sum(-1)
  value = (best_acc[np.arange(used)[None], combos] * freq).sum(-1)
  ok = spend <= budget + 1e-9
  order = np.lexsort(tuple(grid[combos][:, ::-1].T) + (-spend, -np.where(ok, value, -np.inf)))
  c = combos[order[0]]
  pad = bins - used
  return AllocationPlan(edges=np.concatenate([edges, np.full(pad, np.inf)]).astype(np.float32),
                        budgets=np.concatenate([grid[c], np.full(pad, grid[c][-1])]).astype(np.int32),
                        rules=np.concatenate([best_rule[np.arange(used), c], np.zeros(pad, int)]).astype(np.int32),
                        freq=np.concatenate([freq, np.zeros(pad)]), accuracy=float(value[order[0]]))


def _difficulty(kind: str, arrays: dict, member) -> jax.Array:
  """float32[P, S] predicted easiness of each subset's probe (member bool[P, S, n])."""
  if kind == "agreement":
    totals = jnp.einsum("psn,pna->psa", member.astype(jnp.float32),
                        jax.nn.one_hot(arrays["answers"], member.shape[-1], dtype=jnp.float32))
    return totals.max(-1) / jnp.maximum(member.sum(-1), 1)
  scores = arrays[kind][:, None, :]
  return jnp.sum(jnp.where(member, scores, 0.0), -1) / jnp.maximum(member.sum(-1), 1)


def _search_outcomes(search_out, grid, budget) -> jax.Array:
  """float32[Rs, P, S]: each search's correctness at each subset's bin budget (search_out
  float32[G, Rs, P] at the grid budgets, int32[G]; budget int32[P, S])."""
  gi = jnp.argmax(budget[..., None] == grid, axis=-1)  # [P, S]
  rows = jnp.arange(budget.shape[0])[:, None]
  return jnp.moveaxis(search_out[gi, :, rows], -1, 0)


def _rule_outcomes(rules: tuple[str, ...], arrays: dict, rank, member) -> jax.Array:
  """float32[R, P, S]: each rule's correctness on each subset (member bool[P, S, n])."""
  answers, correct = arrays["answers"], arrays["correct"]
  out = []
  for rule in rules:
    kind, _, verifier = rule.partition("-")
    if kind == "best":
      scores = jnp.where(member, arrays[verifier][:, None, :], -jnp.inf)
      top = jnp.argmax(scores, axis=-1)
      hit = jnp.take_along_axis(jnp.broadcast_to(correct[:, None, :], member.shape), top[..., None], axis=-1)[..., 0]
      out.append(hit.astype(jnp.float32))
    else:
      chosen = _vote(answers, member, arrays[verifier] if kind == "weighted" else None)
      out.append(_outcome(answers, correct, rank, member, chosen))
  return jnp.stack(out)


@functools.partial(jax.jit, static_argnames=("rules", "kind", "probe"))
def _calibration_draws(arrays, rank, grid, rules, kind, probe):
  """(difficulty float32[P, S], outcomes float32[G, R, P, S]) on one batch's pool."""
  d = _difficulty(kind, arrays, rank < probe)
  o = jax.vmap(lambda b: _rule_outcomes(rules, arrays, rank, rank < b))(grid)
  return d, o


@functools.partial(jax.jit, static_argnames=("rules", "kind", "probe"))
def _evaluate_plans(arrays, ranks, edges, budgets, rule_ids, search_out, grid, rules, kind, probe):
  """ranks int32[K, P, S, n]; edges float32[K, P, bins - 1], budgets / rule_ids int32[K, P,
  bins] (each problem's plan at each experiment budget; rule ids past the pool rules are
  searches, whose correctness at the grid budgets int32[G] is search_out float32[G, Rs, P])
  -> (accuracy, samples, variance, pool samples)[K, P] and the share of subsets that ran
  each search at each grid budget float32[K, P, Rs, G]."""
  r_pool, r_search = len(rules), search_out.shape[1]

  def one_budget(rank, edge, bud, rid):
    d = _difficulty(kind, arrays, rank < probe)
    which = jnp.sum(d[..., None] >= edge[:, None, :], -1)  # [P, S]
    b = jnp.take_along_axis(bud, which, axis=1)
    r = jnp.take_along_axis(rid, which, axis=1)
    outs = jnp.concatenate([_rule_outcomes(rules, arrays, rank, rank < b[..., None]),
                            _search_outcomes(search_out, grid, b)])
    out = jnp.take_along_axis(outs, r[None], axis=0)[0]
    w = jnp.ones(out.shape[-1], jnp.float32)
    acc, samples, var = _summarise(out, b.astype(jnp.float32), w, False)
    searched = r >= r_pool
    pool_used = jnp.mean(jnp.where(searched, probe, b).astype(jnp.float32), axis=-1)
    runs = (jax.nn.one_hot(r - r_pool, r_search)[..., :, None] * (b[..., None] == grid)[..., None, :]
            * searched[..., None, None])  # [P, S, Rs, G]
    return acc, samples, var, pool_used, jnp.mean(runs, axis=1)

  return jax.vmap(one_budget)(ranks, edges, budgets, rule_ids)


_CALIBRATIONS: dict = {}  # this run's calibration batches and, per (probe, difficulty, rules), its draws


@dataclasses.dataclass(frozen=True)
class ComputeOptimal(PoolMethod):
  """Compute-optimal allocation (see the module docstring). probe: samples that predict the
  difficulty (<= the smallest budget); difficulty: "orm", "prm" or "agreement"; bins:
  difficulty bins (1: uniform allocation); rules: the selection rules a bin may use;
  searches: search methods (`SearchMethod`s, e.g. `BeamSearch`) a bin may run instead, with
  its budget less the probe as their N."""

  probe: int = 4
  difficulty: Difficulty = "orm"
  bins: int = 4
  rules: tuple[str, ...] = ("majority", "weighted-orm", "best-orm")
  searches: tuple = ()
  name: str = "compute-optimal (ORM difficulty)"

  def rule_names(self) -> tuple[str, ...]:
    """The pool rules, then the searches (a plan's rule ids index this)."""
    return tuple(self.rules) + tuple(s.name for s in self.searches)

  def search_budget(self, search, grid_budget: int) -> int | None:
    """N of `search` in a bin of `grid_budget` samples (None: it cannot run there)."""
    n = int(grid_budget) - self.probe
    if n < 1:
      return None
    try:
      search.check_budgets((n,))
    except ValueError:
      return None
    return n

  def verifiers(self) -> tuple[str, ...]:
    used = {self.difficulty} | {r.partition("-")[2] for r in self.rules}
    return tuple(v for v in ("orm", "prm") if v in used)

  def check_budgets(self, budgets) -> None:
    if self.difficulty not in ("orm", "prm", "agreement"):
      raise ValueError(f"difficulty must be 'orm', 'prm' or 'agreement', got {self.difficulty!r}")
    bad = [r for r in self.rules if r not in RULES]
    if bad or not self.rules:
      raise ValueError(f"unknown rules {bad or '()'}; choose from {RULES}")
    if self.bins < 1:
      raise ValueError(f"bins must be >= 1, got {self.bins}")
    if not 1 <= self.probe <= min(budgets):
      raise ValueError(f"probe={self.probe} must be in [1, the smallest budget {min(budgets)}]")
    for s in self.searches:
      if not callable(getattr(s, "evaluate_budget", None)):
        raise ValueError(f"searches must be search methods (e.g. BeamSearch, DVTS, ParticleFiltering); got {s!r}")
      s.check_budgets(())  # its own settings
      if not any(self.search_budget(s, g) for g in self.grid(budgets)):
        raise ValueError(f"{s.name} cannot run at any budget of {self.name}'s grid {self.grid(budgets).tolist()} "
                         f"less its probe of {self.probe}")

  def grid(self, budgets) -> np.ndarray:
    """The per-problem budgets a bin may take: probe x 2^j, the experiment's budgets and the
    pool size, from probe up to the pool size."""
    n = max(budgets)
    doubling = [self.probe << j for j in range(n.bit_length()) if self.probe << j <= n]
    return np.array(sorted({*doubling, *(b for b in budgets if b >= self.probe), n}), np.int32)

  def _arrays(self, pool: Pool) -> dict:
    out = {"answers": jnp.asarray(pool.answers), "correct": jnp.asarray(pool.correct)}
    for v in self.verifiers():
      out[v] = jnp.asarray(pool.verifier_scores(v, "last"))
    return out

  def calibration(self, batch: Batch, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(difficulty float[Q, S], outcomes float[G, R + Rs, Q, S]) on the experiment's Q
    problems, the searches' outcomes after the pool rules' (-1 where a search cannot run;
    cached per run: the calibration batches are drawn once, at the first batch, and shared
    by every ComputeOptimal method of the run). `index`: this method's in the experiment
    (its searches' random streams)."""
    return self._calibrated(batch, index)[:2]

  def _search_index(self, index: int, j: int) -> int:
    """The method index of search j's random stream (`Batch.search`): apart from every
    experiment method's."""
    return 1000 * (index + 1) + j

  def _calibrated(self, batch: Batch, index: int):
    """(difficulty, outcomes, search costs {(j, grid index): [Cost per problem]})."""
    exp = batch.experiment
    run = (exp, id(batch.models))
    if _CALIBRATIONS.get("run") != run:  # one run at a time
      _CALIBRATIONS.clear()
      _CALIBRATIONS["run"], _CALIBRATIONS["batches"] = run, {}
    key = (self.probe, self.difficulty, self.rules, self.searches, index if self.searches else None)
    if key not in _CALIBRATIONS:
      problems = exp.task.split(exp.split)[:exp.num_problems]
      grid = jnp.asarray(self.grid(exp.budgets))
      batches = _CALIBRATIONS["batches"]
      ds, os_, costs = [], [], {}
      for start in range(0, len(problems), exp.batch_problems):
        chunk = list(problems[start:start + exp.batch_problems])
        if start not in batches:
          batches[start] = batch if start == batch.start else Batch(
              experiment=exp, models=batch.models, problems=chunk, start=start, prompt_width=batch.prompt_width,
              timer=batch.timer)
        cal = batches[start]
        pool = cal.pool(self.verifiers()).padded(exp.batch_problems)
        rank = cal.subset_ranks(exp.budgets)[0]
        d, o = jax.device_get(_calibration_draws(self._arrays(pool), rank, grid, rules=self.rules,
                                                 kind=self.difficulty, probe=self.probe))
        searched = np.full((len(grid), len(self.searches)) + d[:len(chunk)].shape, -1.0, np.float32)
        for j, s in enumerate(self.searches):
          for gi, g in enumerate(self.grid(exp.budgets)):
            n = self.search_budget(s, g)
            if n is not None:
              with cal.timer.phase("search"):
                outs = s.evaluate_budget(cal, n, self._search_index(index, j))
              searched[gi, j] = np.array([x.accuracy for x in outs], np.float32)[:, None]
              costs.setdefault((j, gi), []).extend(x.cost for x in outs)
        ds.append(d[:len(chunk)])
        os_.append(np.concatenate([o[:, :, :len(chunk)], searched], axis=1))
      _CALIBRATIONS[key] = (np.concatenate(ds), np.concatenate(os_, axis=2), costs)
    return _CALIBRATIONS[key]

  def plans(self, batch: Batch, index: int = 0) -> dict[tuple[int, int], AllocationPlan]:
    """{(parity, budget): the plan for problems of that parity}, fitted on the other parity."""
    exp = batch.experiment
    d, o = self.calibration(batch, index)
    parity = np.arange(d.shape[0]) % 2
    if len(set(parity)) < 2:
      raise ValueError(f"{self.name} cross-fits over the experiment's problems: it needs num_problems >= 2")
    out = {}
    for f in (0, 1):
      other = parity != f
      for k in exp.budgets:
        out[f, k] = fit_allocation(d[other].reshape(-1), o[:, :, other].reshape(o.shape[:2] + (-1,)),
                                   self.grid(exp.budgets), k, self.bins)
    return out

  def evaluate_pool(self, pool: Pool, budgets, ranks, plans=None, start: int = 0, search_out=None):
    """As `PoolMethod.evaluate_pool`, with `plans` (from `plans`), the pool's first problem's
    index in the split `start` (its parity picks the plan) and, with searches, their
    correctness float32[G, Rs, P] at the grid budgets. Returns (accuracy, samples, variance,
    pool samples)[K, P] and the searches' share of subsets float32[K, P, Rs, G]."""
    parity = (start + np.arange(pool.shape[0])) % 2
    pick = lambda field: jnp.asarray(np.stack([np.stack([getattr(plans[f, k], field) for f in parity])  # noqa: E731
                                               for k in budgets]))
    grid = self.grid(budgets)
    if search_out is None:
      search_out = np.zeros((len(grid), len(self.searches), pool.shape[0]), np.float32)
    return _evaluate_plans(self._arrays(pool), ranks, pick("edges"), pick("budgets"), pick("rules"),
                           jnp.asarray(search_out, jnp.float32), jnp.asarray(grid), rules=self.rules,
                           kind=self.difficulty, probe=self.probe)

  def evaluate(self, batch: Batch, index: int) -> dict[int, list[Outcome]]:
    exp = batch.experiment
    budgets, p = exp.budgets, len(batch.problems)
    plans = self.plans(batch, index)
    _, o, search_costs = self._calibrated(batch, index)
    rows = slice(batch.start, batch.start + p)  # calibration rows are the split's first problems, in order
    search_out = np.zeros((len(self.grid(budgets)), len(self.searches), exp.batch_problems), np.float32)
    search_out[:, :, :p] = o[:, len(self.rules):, rows, 0]
    pool = batch.pool(self.verifiers()).padded(exp.batch_problems)
    acc, used, mc_var, pool_used, runs = jax.device_get(
        self.evaluate_pool(pool, budgets, batch.subset_ranks(budgets), plans, batch.start, search_out))
    costs = batch.pool_cost(pool_used[:, :p], self.verifiers())
    for (j, gi), per_problem in search_costs.items():
      for b in range(len(budgets)):
        for i in range(p):
          if runs[b, i, j, gi] > 0:
            costs[b][i] = costs[b][i] + per_problem[batch.start + i].scale(float(runs[b, i, j, gi]))
    return {k: [Outcome(accuracy=acc[b, i], samples=used[b, i], mc_var=mc_var[b, i], cost=costs[b][i])
                for i in range(p)] for b, k in enumerate(budgets)}
