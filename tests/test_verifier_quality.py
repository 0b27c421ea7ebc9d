"""The exact checker corrupted to a chosen ROC AUC: a verifier of known quality, for pools
(best-of-N, weighted majority) and for search (the potential)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tts_jax.eval import BestOfN, DVTS, Experiment, ParticleFiltering, WeightedMajority
from tts_jax.eval.metrics import pass_at_k
from tts_jax.eval.pool import Pool
from tests.helpers import modchain_right_and_wrong
from tts_jax.tasks import ModChain, step_oracle
from tts_jax.verifiers import roc_auc
from tts_jax.verifiers.corruption import checker_noise, corrupted_scores


def _noise(seed, prompt, completions, done):
  """checker_noise of one prompt (a list of ids) and its completions (lists of ids), numpy."""
  t = max(map(len, completions))
  tokens = np.zeros((1, len(completions), t), np.int64)
  for j, c in enumerate(completions):
    tokens[0, j, :len(c)] = c
  lengths = np.array([list(map(len, completions))])
  return checker_noise(seed, np.array([prompt]), np.array([len(prompt)]), tokens, lengths,
                       np.full(lengths.shape, done))[0]


def test_noise_is_a_pure_standard_normal_of_the_text():
  draws = _noise(0, [1, 2, 3], [[i, i % 7] for i in range(4000)], False)
  assert _noise(0, [1, 2, 3], [[5, 5]], False)[0] == draws[5]  # the same text, the same draw
  assert _noise(0, [1, 2, 3], [[5, 5], [1, 2, 3, 4, 5, 6]], False)[0] == draws[5]  # whatever the padding
  assert _noise(1, [1, 2, 3], [[5, 5]], False)[0] != draws[5]  # the seed, done and the ids all count
  assert _noise(0, [1, 2, 3], [[5, 5]], True)[0] != draws[5]
  assert _noise(0, [1, 2], [[3, 5, 5]], False)[0] != draws[5]
  assert _noise(0, [1, 2, 4], [[5, 5]], False)[0] != draws[5]
  assert _noise(0, [1, 2, 3], [[5, 5, 0]], False)[0] != draws[5]
  assert _noise(0, [1, 2, 3], [[5]], False)[0] != draws[5]
  assert len(set(draws.tolist())) > 0.99 * len(draws)  # 24-bit uniforms: a few equal by chance
  assert stats.kstest(draws, "norm").pvalue > 1e-3


def test_noise_is_the_same_on_device():
  """The engine's noise (jax.numpy, float32, jitted) is the pools' (numpy, float64) up to
  float32 rounding, from the same 32-bit hash; whatever the padding of the prompt."""
  rng = np.random.default_rng(0)
  b, n, t, tp = 5, 64, 20, 7
  prompt_lengths = rng.integers(1, tp + 1, b)
  prompts = rng.integers(0, 62, (b, tp)) * (np.arange(tp) < prompt_lengths[:, None])
  tokens, lengths, done = rng.integers(0, 62, (b, n, t)), rng.integers(0, t + 1, (b, n)), rng.random((b, n)) < 0.5
  host = checker_noise(3, prompts, prompt_lengths, tokens, lengths, done)
  wide = np.concatenate([prompts, rng.integers(0, 62, (b, 4))], 1)  # other ids past each prompt's end
  device = jax.jit(lambda seed, *a: checker_noise(seed, *a, xp=jnp))(
      np.int32(3), wide.astype(np.int32), prompt_lengths.astype(np.int32), tokens.astype(np.int32),
      lengths.astype(np.int32), done)
  assert device.dtype == jnp.float32 and host.dtype == np.float64
  np.testing.assert_allclose(np.asarray(device), host, rtol=1e-4, atol=1e-5)  # float32 ndtri in the tails


@pytest.mark.parametrize("auc", [0.5, 0.6, 0.75, 0.9, 0.99])
def test_corrupted_scores_have_the_asked_auc(auc):
  """20,000 verdicts (40% right): the AUC's standard error is < 0.005, the tolerance 0.02."""
  rng = np.random.default_rng(0)
  ok = rng.random(20_000) < 0.4
  noise = _noise(3, [7], [[i] for i in range(20_000)], True)
  assert abs(roc_auc(corrupted_scores(ok, noise, auc), ok) - auc) < 0.02
  assert roc_auc(corrupted_scores(ok, noise, 1.0), ok) == 1.0


def _pool(p=300, n=16, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.beta(0.7, 1.0, size=(p, 1))  # per-problem difficulty
  correct = rng.random((p, n)) < q
  answers = np.where(correct, 0, rng.integers(1, 6, size=(p, n))).astype(np.int32)
  zeros = np.zeros((p, n))
  return Pool(answers=answers, correct=correct, lengths=np.full((p, n), 10, np.int32), mean_entropy=zeros,
              mean_logprob=zeros, seq_ids=np.tile(np.arange(n, dtype=np.int32), (p, 1)),
              prompt_lens=np.full(p, 5, np.int32), oracle_noise=rng.standard_normal((p, n)))


def test_best_of_n_with_the_exact_checker_is_pass_at_k_and_decays_to_pass_at_1():
  pool, budgets = _pool(), (1, 4, 16)
  acc = lambda auc: np.asarray(BestOfN(verifier="oracle", verifier_auc=auc).evaluate_pool(pool, budgets, None)[0])
  exact = pass_at_k(16, pool.correct.sum(1)[None, :], np.asarray(budgets)[:, None])
  np.testing.assert_allclose(acc(1.0), exact, atol=1e-6)
  curve = [acc(a)[2].mean() for a in (0.5, 0.7, 0.9, 0.99, 1.0)]  # at N = 16, common noise
  assert all(x < y for x, y in zip(curve, curve[1:])), curve
  # AUC 0.5 is a random pick: pass@1 on average (standard error of the mean over 300 problems ~0.02).
  assert abs(curve[0] - pool.correct.mean()) < 0.06


def test_weighted_majority_with_the_checker_uses_its_scores():
  pool = _pool(seed=1)
  run = lambda auc: np.asarray(WeightedMajority(verifier="oracle", verifier_auc=auc).evaluate_pool(
      pool, (16,), jnp.asarray(np.argsort(np.random.default_rng(2).random((1, 300, 4, 16)), -1), jnp.int32))[0])
  assert run(1.0).mean() > run(0.8).mean() > run(0.55).mean()
  assert WeightedMajority(verifier="oracle").verifiers() == ()  # no model read, no verifier compute charged


def test_the_corrupted_potential_scores_the_checker_verdict_with_noise():
  """The modchain solution and a copy with a wrong first result, whole and cut after step 1:
  log r equals log clip(sigmoid(mu (y - 1/2) + e)) with e the text's own draw."""
  task = ModChain()
  prompt, tokens, lengths, done, ok = modchain_right_and_wrong(task, task.split("hard")[0])
  for auc in (1.0, 0.8):
    pot = step_oracle(task, auc=auc, seed=5)
    state = pot.init(None, jnp.asarray([prompt]), jnp.asarray([len(prompt)]), 4, tokens.shape[-1])
    score, _ = jax.jit(lambda s, x, l, d: pot.score(None, s, x, l, d, None))(
        state, jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(done))
    noise = checker_noise(5, np.array([prompt]), np.array([len(prompt)]), tokens, lengths, done)[0]
    np.testing.assert_allclose(np.asarray(score)[0], np.log(corrupted_scores(ok, noise, auc)), rtol=1e-5)


def test_verifier_auc_is_checked():
  with pytest.raises(ValueError, match="verifier_auc corrupts the exact checker"):
    BestOfN(verifier="orm", verifier_auc=0.8)
  with pytest.raises(ValueError, match=r"auc must be in \[0.5, 1\)"):
    WeightedMajority(verifier="oracle", verifier_auc=1.5)
  with pytest.raises(ValueError, match="verifier_auc corrupts the exact checker"):
    Experiment(name="x", task=ModChain(), methods=(ParticleFiltering(verifier_auc=0.7),), budgets=(4,))
  with pytest.raises(ValueError, match=r"auc must be in \[0.5, 1\)"):
    Experiment(name="x", task=ModChain(), methods=(DVTS(verifier="oracle", verifier_auc=0.3),), budgets=(4,))
  pf = ParticleFiltering(verifier="oracle", verifier_auc=0.7)
  pot, params = pf.potential(None, ModChain())
  assert params is None and pot.auc == 0.7 and dataclasses.replace(pf, verifier_auc=1.0).potential(None, ModChain())[0].auc == 1


def test_runner_plots_accuracy_against_the_verifier_auc(tmp_path):
  """Pool methods with the corrupted checker in the runner (no verifier model read or charged):
  best-of-N with the exact checker equals pass@N per problem; the extra plot is written."""
  import json
  import os
  from tts_jax.eval import MajorityVote, PassAtK, run_experiment
  from tts_jax.eval.summary import method_families
  methods = (PassAtK(), MajorityVote(), *(m for auc in (0.6, 1.0) for m in (
      BestOfN(verifier="oracle", verifier_auc=auc, name=f"best-of-N (AUC {auc})"),
      WeightedMajority(verifier="oracle", verifier_auc=auc, name=f"weighted majority (AUC {auc})"))))
  exp = Experiment(name="vq", task=ModChain(), split="hard", num_problems=3, methods=methods, budgets=(2, 8),
                   max_new_tokens=64, batch_problems=3, num_subsets=8, out_dir=str(tmp_path),
                   plot_against="verifier_auc")
  run_experiment(exp, quiet=True)
  assert os.path.getsize(tmp_path / "against_verifier_auc.png") > 0
  for line in (tmp_path / "results.jsonl").read_text().splitlines():
    rec = json.loads(line)["methods"]
    assert rec["best-of-N (AUC 1.0)"]["accuracy"] == pytest.approx(rec["pass@k (oracle)"]["accuracy"], abs=1e-6)
    assert rec["best-of-N (AUC 0.6)"]["verifier_tokens"] == 0
  families, refs = method_families(methods, "verifier_auc")
  assert list(families) == ["best-of-N", "weighted majority"] and [m.name for m in refs] == ["pass@k (oracle)",
                                                                                             "majority vote"]
  with pytest.raises(ValueError, match="plot_against='verifier_aux' is a field of none of the methods"):
    dataclasses.replace(exp, plot_against="verifier_aux")
