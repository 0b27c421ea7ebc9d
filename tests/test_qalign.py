"""QAlign (Metropolis-Hastings over completions) against enumeration on a tabular LM:
the chains' states follow sigma(x) proportional to p(x) exp(r(x) / beta) (chi-square over all
generations) and the acceptance rate at stationarity equals its enumerated value. Each test
also shows that its statistic rejects the wrong answer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tests.helpers import HostScored
from tests.tabular_target import make_target
from tts_jax.mcmc import qalign
from tts_jax.sampling.prefixes import splice, suffix_prompts
from tts_jax.models.tabular import enumerate_generations

BETA = 0.5


@pytest.fixture(scope="module")
def target():
  # phi only on finished generations: r(x) = log phi(x), the target p(x) phi(x)^(1 / beta)
  return make_target(vocab=4, max_new=4, seed=2, phi_scale=0.5, final_only=True)


def _run(tgt, reps, steps, seed, beta=BETA, chains=1):
  return qalign(tgt.lm, tgt.params, *tgt.prompts(reps), jax.random.key(seed), reward=tgt.potential, steps=steps,
                beta=beta, num_chains=chains, max_new_tokens=tgt.max_new, stop_tokens=tgt.stops)


def _tilted(tgt, beta):
  seqs, logp = tgt.generations
  lu = logp + np.array([tgt.log_phi(s) for s in seqs]) / beta
  return seqs, np.exp(lu - np.logaddexp.reduce(lu))


def _pvalue(counts, probs):
  expected = counts.sum() * probs
  big = expected >= 5
  return stats.chisquare(np.append(counts[big], counts[~big].sum()), np.append(expected[big], expected[~big].sum())).pvalue


def test_helpers_build_prefix_rows_and_splice():
  prompts, plens = jnp.asarray([[1, 2, 0], [3, 0, 0]]), jnp.asarray([2, 1])
  toks = jnp.asarray([[5, 6, 7, 9], [8, 8, 8, 8]])
  rows, lens = suffix_prompts(prompts, plens, toks, jnp.asarray([2, 0]), pad_id=9)
  assert rows.tolist() == [[1, 2, 5, 6, 9, 9, 9], [3, 9, 9, 9, 9, 9, 9]] and lens.tolist() == [4, 1]
  out, n = splice(toks, jnp.asarray([1, 0]), jnp.asarray([[4, 4, 4, 4], [2, 3, 9, 9]]), jnp.asarray([2, 2]), pad_id=9)
  assert out.tolist() == [[5, 4, 4, 9], [2, 3, 9, 9]] and n.tolist() == [3, 2]


def test_chains_converge_to_the_tilted_target(target):
  seqs, sigma = _tilted(target, BETA)
  reps, steps = 4000, 40  # from samples of p, total variation 0.85 -> 0.09 by step 30 (beta = 0.5 is sharp)
  chains = _run(target, reps, steps, seed=0)
  idx = lambda k: target.seq_index(np.asarray(chains.tokens[:, 0, k]), np.asarray(chains.lengths[:, 0, k]))
  counts = np.bincount(idx(steps), minlength=len(seqs)).astype(float)
  assert _pvalue(counts, sigma) > 1e-3
  # The start (samples of p) is rejected by the same test: the chains did the work.
  start = np.bincount(idx(0), minlength=len(seqs)).astype(float)
  assert _pvalue(start, sigma) < 1e-6
  # ...and the end is not p: a wrong temperature (beta = 1) is rejected too.
  assert _pvalue(counts, _tilted(target, 1.0)[1]) < 1e-6
  # Bookkeeping: the start drew its whole completion; a step drew at most T - kept tokens.
  drawn, kept = np.asarray(chains.drawn[:, 0]), np.asarray(chains.kept[:, 0])
  assert np.array_equal(drawn[:, 0], np.asarray(chains.lengths[:, 0, 0])) and np.all(kept[:, 0] == 0)
  assert np.all(drawn[:, 1:] >= 1) and np.all(kept + drawn <= target.max_new)
  # The stored rewards are r(x) of the states.
  r = np.asarray(chains.reward[:, 0, steps])
  np.testing.assert_allclose(r, [target.log_phi(seqs[i]) for i in idx(steps)], atol=1e-6)


def _exact_acceptance(tgt, beta) -> float:
  """E over x ~ sigma, i ~ U{0..|x|-1}, x' ~ p(. | x_<i) of min(1, exp((r' - r) / beta) |x| / |x'|)."""
  seqs, sigma = _tilted(tgt, beta)
  total = 0.0
  for x, w in zip(seqs, sigma):
    for i in range(len(x)):
      sufs, logq = enumerate_generations(tgt.lm, tgt.params, tgt.prompt + list(x[:i]), tgt.max_new - i, tgt.stops)
      for s, lq in zip(sufs, logq):
        new = tuple(x[:i]) + tuple(s)
        a = min(1.0, math.exp((tgt.log_phi(new) - tgt.log_phi(x)) / beta) * len(x) / len(new))
        total += w / len(x) * math.exp(lq) * a
  return total


def test_acceptance_rate_matches_enumeration(target):
  exact = _exact_acceptance(target, BETA)
  reps, chains = 3000, 2
  # Moves of chains at stationarity: steps 40..79 (the chains mix by ~30, see above).
  run = _run(target, reps, 80, seed=5, chains=chains)
  acc = np.asarray(run.accepted[:, :, 40:], np.float64)  # [reps, chains, 40]
  rate = acc.mean()
  se = acc.mean(axis=-1).std() / np.sqrt(acc.shape[0] * acc.shape[1])  # chains are independent; steps are not
  assert abs(rate - exact) < 4 * se + 1e-3, (rate, exact, se)
  assert 0.1 < exact < 0.9 and se < 0.02  # a rate the test can tell apart from 0, 1 or a wrong formula
  # The same measurement rejects the acceptance rule without the |x| / |x'| correction.
  assert abs(_exact_acceptance_without_length_ratio(target, BETA) - exact) > 8 * se


def _exact_acceptance_without_length_ratio(tgt, beta) -> float:
  seqs, sigma = _tilted(tgt, beta)
  total = 0.0
  for x, w in zip(seqs, sigma):
    for i in range(len(x)):
      sufs, logq = enumerate_generations(tgt.lm, tgt.params, tgt.prompt + list(x[:i]), tgt.max_new - i, tgt.stops)
      for s, lq in zip(sufs, logq):
        new = tuple(x[:i]) + tuple(s)
        total += w / len(x) * math.exp(lq) * min(1.0, math.exp((tgt.log_phi(new) - tgt.log_phi(x)) / beta))
  return total


def test_bad_arguments_are_named(target):
  for kw, match in [(dict(steps=-1), "steps must be an int >= 0"), (dict(num_chains=0), "num_chains must be an int"),
                    (dict(beta=0.0), "beta must be a finite number > 0")]:
    args = dict(steps=2, beta=1.0, num_chains=1) | kw
    with pytest.raises(ValueError, match=match):
      qalign(target.lm, target.params, *target.prompts(2), jax.random.key(0), reward=target.potential,
             max_new_tokens=target.max_new, **args)


class _HostReward(HostScored):
  """The target's reward computed on the host: read from `host_score`'s arrays when the chains
  run from the host, else called back."""

  def __init__(self, tgt):
    self.tgt = tgt

  def host_score(self, prompt_tokens, prompt_lengths, tokens, lengths, done, extended, capacity):
    out = np.zeros(lengths.shape, np.float32)
    for i in np.ndindex(lengths.shape):
      out[i] = self.tgt.log_phi(tokens[i][:lengths[i]].tolist()) if done[i] else 0.0
    return out


def test_a_host_reward_runs_between_programs(target, monkeypatch):
  """A reward with host work: the chains' parts run as programs with `host_score` between
  them (no callback; on a 1-device mesh per device too) and give the one-program chains that
  call the reward back, bit for bit. (8 devices: tests/test_parallel.py.)"""
  from tts_jax.mcmc.qalign import _Chains, _qalign_jit
  from tts_jax.parallel import make_mesh
  from tts_jax.sampling.inputs import prompt_keys
  reward = _HostReward(target)
  kw = dict(steps=6, beta=BETA, num_chains=3, max_new_tokens=target.max_new, stop_tokens=target.stops)
  with monkeypatch.context() as m:  # traced before the one-program form, which calls back
    m.setattr(jax, "pure_callback", lambda *a, **k: pytest.fail("a host reward called back"))
    runs = [qalign(target.lm, target.params, *target.prompts(4), jax.random.key(5), reward=reward, mesh=mesh, **kw)
            for mesh in (None, make_mesh())]
  chains = _Chains(target.lm, kw["steps"], kw["beta"], kw["num_chains"], target.max_new, target.stops, 0)
  one = _qalign_jit(chains, target.params, reward, None, *target.prompts(4), prompt_keys(jax.random.key(5), 4))
  for run in runs:
    for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(run), jax.tree_util.tree_leaves_with_path(one)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
      assert x.dtype == y.dtype, jax.tree_util.keystr(path)  # (the host form's record buffers)
  assert 0 < float(np.asarray(one.accepted).mean()) < 1


def test_qalign_method_in_the_runner(tmp_path):
  """QAlign as an experiment method on the shipped models: one chain serves every budget (the
  first N states), with the exact checker as reward and a small beta a chain that reaches a
  right answer never leaves it, N = 1 is the chain's start (a policy sample), and the compute
  grows with N. Results are the same after a resume."""
  import dataclasses
  import json
  from tests.helpers import without_timing
  from tts_jax.eval import Experiment, QAlign, run_experiment
  from tts_jax.tasks import ModChain
  exp = Experiment(name="qa", task=ModChain(), split="test", num_problems=6, models="default",
                   methods=(QAlign(reward="oracle", beta=0.05, final="last", name="qalign-oracle"),
                            QAlign(reward="orm", name="qalign-orm")),
                   budgets=(1, 3, 6), max_new_tokens=64, batch_problems=2, out_dir=str(tmp_path / "full"))
  full = run_experiment(exp, quiet=True)
  recs = [json.loads(x) for x in (tmp_path / "full" / "results.jsonl").read_text().splitlines()]
  by = {(r["problem"], r["budget"]): r["methods"] for r in recs}
  climbed = 0
  for i in range(6):
    acc = [by[i, k]["qalign-oracle"]["accuracy"] for k in (1, 3, 6)]
    assert acc == sorted(acc), acc  # right is absorbing at beta = 0.05 (the last state is read)
    climbed += acc[0] < acc[-1]
    for name in ("qalign-oracle", "qalign-orm"):
      rows = [by[i, k][name] for k in (1, 3, 6)]
      assert [r["samples"] for r in rows] == [1.0, 3.0, 6.0]
      assert rows[0]["flops"] < rows[1]["flops"] < rows[2]["flops"]
      assert 0.0 <= rows[2]["acceptance"] <= 1.0
    assert by[i, 6]["qalign-orm"]["verifier_tokens"] > 0 and by[i, 6]["qalign-oracle"]["verifier_tokens"] == 0
  assert climbed >= 1  # some chain started wrong and moved to a right answer (seeded: 2 of 6 do)
  cut = dataclasses.replace(exp, out_dir=str(tmp_path / "cut"))
  run_experiment(cut, stop_after_batches=1, quiet=True)
  assert without_timing(run_experiment(cut, quiet=True)) == without_timing(full)
  with pytest.raises(ValueError, match="reward must be 'orm' or 'oracle'"):
    Experiment(name="x", task=ModChain(), methods=(QAlign(reward="prm"),), budgets=(2,))
