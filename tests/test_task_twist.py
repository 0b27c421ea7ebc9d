"""The task-level twist pipeline (`tts_jax.train.twist`) on the shipped modchain policy: the
initial twist is exactly untwisted SMC, a CTL step moves it, and the exact target sampler
returns what the checker accepts."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.tabular_target import make_target
from tts_jax.eval import Experiment, ParticleFiltering, run_experiment
from tts_jax.models.io import load_model, save_model
from tts_jax.models.tabular import TabularLM
from tts_jax.models.twist_head import BoundedTwist
from tts_jax.smc import run_smc
from tts_jax.smc.twists import optimal_tabular_twists
from tts_jax.tasks import ModChain, TaskChecker, load_default, prompt_ids, step_oracle
from tts_jax.tasks.shipped import DEFAULTS_DIR
from tts_jax.train.twist import (TwistTrainConfig, _prompts, exact_target_samples, train_twist,
                                 twist_config,
                                 twist_from_policy, twist_regression_loss)


@pytest.fixture(scope="module")
def setup():
  task, models = ModChain(), load_default("modchain")
  return task, models, task.split("hard")[:3]


def test_the_initial_twist_is_untwisted_smc(setup):
  task, models, problems = setup
  twist, tparams = twist_from_policy(models.policy, models.policy_params)
  toks, lens = _prompts(task, problems)
  cfg = twist_config(task, 4, 32)
  run = lambda **kw: run_smc(models.policy, models.policy_params, toks, lens, jax.random.key(1), cfg=cfg,  # noqa
                             potential=step_oracle(task), **kw)
  plain, twisted = run(), run(twist=twist, twist_params=tparams)
  np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(twisted.tokens))
  np.testing.assert_allclose(np.asarray(plain.log_weights), np.asarray(twisted.log_weights), atol=1e-6)
  np.testing.assert_allclose(np.asarray(plain.final_log_z()), np.asarray(twisted.final_log_z()), atol=1e-6)


def test_exact_target_samples_tilt_towards_right_answers(setup):
  """sigma(right) = a (1 - eps) / (a (1 - eps) + (1 - a) eps) for a problem the policy gets
  right with probability a: far above a, below 1 on the problems it rarely solves."""
  task, models, _ = setup
  problems = task.split("hard")[:10]
  toks, lens = exact_target_samples(task, models, problems, jax.random.key(0), max_new_tokens=96, batch=32)
  check = TaskChecker(task)
  right = np.mean([check(prompt_ids(task, p), np.asarray(toks[i, :lens[i]]).tolist(), True)
                   for i, p in enumerate(problems)])
  pass_at_1 = models.report["hard"]["pass@1"]  # 0.27: what plain samples of the policy would give
  # Accepting every sample would give ~0.27; sigma's share is ~0.7 (a quarter of the hard
  # problems are almost never solved, so there sigma too is mostly wrong answers).
  assert right >= 0.5 and pass_at_1 <= 0.3, (right, pass_at_1)


def test_the_warm_start_loss_is_minimised_by_the_optimal_twist():
  """Outcome regression: with every (prefix, next token) its own parameter (a tabular twist)
  and the exact expectation over all generations (each weighted by p(x)), the minimiser of
  `twist_regression_loss` is psi*(x_{1:t}) = E_p[phi | x_{1:t}], phi = eps + (1 - 2 eps) r(x),
  the optimal twist computed by enumeration (`optimal_tabular_twists`)."""
  eps = 0.05
  tgt = make_target(final_only=True)
  seqs, logp = tgt.generations
  r = np.asarray(jax.nn.sigmoid(jnp.asarray([tgt.log_phi(s) * 3 for s in seqs])))  # an outcome in (0, 1) per x
  width = len(tgt.prompt) + tgt.max_new
  tokens = np.zeros((len(seqs), width), np.int32)
  weight, target = np.zeros((len(seqs), width), np.float32), np.zeros((len(seqs), width), np.float32)
  for i, s in enumerate(seqs):
    tokens[i, :len(tgt.prompt) + len(s)] = list(tgt.prompt) + list(s)
    at = slice(len(tgt.prompt), len(tgt.prompt) + len(s))  # every generated token
    weight[i, at], target[i, at] = np.exp(logp[i]), r[i]
  batch = {"tokens": jnp.asarray(tokens), "weight": jnp.asarray(weight), "target": jnp.asarray(target)}
  twist = BoundedTwist(TabularLM(tgt.lm.vocab_size, tgt.lm.max_length), eps)
  loss_fn = twist_regression_loss(twist)
  opt = optax.adam(0.2)
  params = {"logits": jnp.zeros((twist.lm.num_prefixes, twist.lm.vocab_size))}

  @jax.jit
  def fit(params):
    def step(carry, _):
      p, s = carry
      g = jax.grad(lambda q: loss_fn(q, batch)[0])(p)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(step, (params, opt.init(params)), None, length=1500)[0][0]

  learned = np.asarray(twist.log_psi(fit(params)["logits"]))
  phi = dict(zip(seqs, np.log(eps + (1 - 2 * eps) * r)))
  best = optimal_tabular_twists(tgt.lm, tgt.params, tgt.prompt, tgt.max_new, lambda s: phi[s], tgt.stops)
  seen = np.zeros(best.shape, bool)  # the (prefix, next token) cells some generation visits
  for s in seqs:
    for t in range(len(s)):
      seen[tgt.lm.prefix_id(list(tgt.prompt) + list(s[:t])), s[t]] = True
  assert seen.sum() > 100
  np.testing.assert_allclose(learned[seen], best[seen], atol=2e-3)


@pytest.fixture(scope="module")
def zero_twist_defaults(tmp_path_factory, setup):
  """The shipped models with a zero-head twist (log psi = 0 everywhere) in a defaults folder."""
  _, models, _ = setup
  root = tmp_path_factory.mktemp("defaults")
  for kind in ("policy", "orm", "prm"):
    shutil.copytree(os.path.join(DEFAULTS_DIR, "modchain", kind), root / kind)
  twist, params = twist_from_policy(models.policy, models.policy_params, eps=0.02)
  save_model(str(root / "twist"), models.policy.config, params, kind="twist", info={"eps": 0.02})
  return root


def test_a_shipped_twist_loads_as_a_bounded_twist(zero_twist_defaults, tmp_path):
  d = load_default("modchain", directory=str(zero_twist_defaults))
  assert isinstance(d.twist, BoundedTwist) and d.twist.eps == 0.02
  assert float(jnp.abs(d.twist_params["lm_head"]).max()) == 0
  shutil.copytree(zero_twist_defaults / "twist", tmp_path / "twist")
  cfg = json.load(open(tmp_path / "twist" / "config.json"))
  json.dump({**cfg, "info": {}}, open(tmp_path / "twist" / "config.json", "w"))
  with pytest.raises(ValueError, match="a twist model needs info.eps"):
    load_model(str(tmp_path / "twist"))
  bad = tmp_path / "defaults"
  shutil.copytree(zero_twist_defaults, bad)
  shutil.rmtree(bad / "twist")
  shutil.copytree(bad / "orm", bad / "twist")  # a value model where the twist belongs
  with pytest.raises(ValueError, match="holds a model of kind 'orm', not 'twist'"):
    load_default("modchain", directory=str(bad))


def test_twisted_smc_in_the_runner(zero_twist_defaults, tmp_path):
  """A zero twist leaves SMC as it is: the same particles, answers, log Z and ESS as the
  untwisted run, at twice the compute (the twist is the policy's size and reads every
  token). The rows hold log Z_hat and the ESS."""
  smc = dict(verifier="oracle", incremental=True, transform="log", resampler="systematic", ess_threshold=0.5,
             final="weighted_majority", step_potentials=False)
  exp = Experiment(name="tiny-twisted", task=ModChain(), split="hard", num_problems=2,
                   models=str(zero_twist_defaults),
                   methods=(ParticleFiltering(name="plain", **smc), ParticleFiltering(twist=True, name="twisted", **smc)),
                   budgets=(4,), max_new_tokens=48, num_subsets=2, batch_problems=2, out_dir=str(tmp_path / "out"))
  summary = run_experiment(exp, quiet=True)
  rows = [json.loads(line) for line in open(tmp_path / "out" / "results.jsonl")]
  s = summary["methods"]["twisted"][0]
  assert s["log_z"] == pytest.approx(np.mean([r["methods"]["twisted"]["log_z"] for r in rows]))
  assert 0 < s["ess"] <= 1 and "resamples" in s
  assert len(rows) == 2
  for row in rows:
    plain, twisted = row["methods"]["plain"], row["methods"]["twisted"]
    for k in ("accuracy", "log_z", "ess", "generated_tokens", "resamples"):
      assert twisted[k] == pytest.approx(plain[k], abs=1e-5), k
    assert twisted["flops"] == pytest.approx(2 * plain["flops"], rel=1e-9)
    assert twisted["kv_bytes"] == pytest.approx(2 * plain["kv_bytes"], rel=1e-9)
    assert np.log(0.01) - 1e-4 <= plain["log_z"] <= np.log(0.99) + 1e-4 and 0 < plain["ess"] <= 1


def test_twisted_smc_configs_are_checked(setup):
  with pytest.raises(ValueError, match=r"\(twist=True\) needs incremental=True"):
    Experiment(name="x", task=ModChain(), methods=(ParticleFiltering(twist=True),), budgets=(4,))
  with pytest.raises(ValueError, match=r"\(step_potentials=False\) scores finished particles.*needs verifier=.oracle."):
    Experiment(name="x", task=ModChain(), methods=(ParticleFiltering(step_potentials=False),), budgets=(4,))
  _, models, _ = setup
  assert models.twist is None or isinstance(models.twist, BoundedTwist)
  no_twist = dataclasses.replace(models, twist=None, twist_params=None)
  with pytest.raises(ValueError, match="twist=True needs a learned twist, and these models have none"):
    ParticleFiltering(twist=True, incremental=True).twist_of(no_twist)
  with pytest.raises(ValueError, match="BoundedTwist.eps must be in"):
    BoundedTwist(models.policy, eps=0.5)


def test_train_twist_runs_both_phases_resumes_and_ships(tmp_path):
  """The pipeline at toy sizes: warm start, CTL, exported model; a run cut in its CTL phase
  and resumed ends with the same params, bit for bit, as an uncut one. (No report here:
  `twist_report` compiles ~18 engine programs, minutes of CI; its bounds are
  `log_z_bounds`, checked against enumeration in tests/test_twisted_smc.py.)"""
  cfg = TwistTrainConfig(task=ModChain(), policy_dir=os.path.join(DEFAULTS_DIR, "modchain", "policy"), steps=2,
                         batch_size=8, problems_per_round=4, samples_per_problem=4, ctl_steps=2, ctl_prompts=2,
                         ctl_particles=4, max_new_tokens=32, eval_problems=0, checkpoint_every=1,
                         out_dir=str(tmp_path / "full"))
  _, full, log = train_twist(cfg)
  assert [r["phase"] for r in log] == ["supervised", "supervised", "ctl", "ctl"]
  assert all(0 < r["ess"] <= 1 for r in log if r["phase"] == "ctl")
  assert float(jnp.abs(full["lm_head"]).max()) > 0  # the zero head moved
  cut = dataclasses.replace(cfg, out_dir=str(tmp_path / "cut"))
  train_twist(cut, stop_after=3)
  assert not os.path.exists(tmp_path / "cut" / "model")
  _, resumed, _ = train_twist(cut)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), full, resumed)
  twist, params, meta = load_model(str(tmp_path / "full" / "model"))
  assert isinstance(twist, BoundedTwist) and meta["kind"] == "twist" and twist.eps == cfg.eps
  assert meta["info"]["steps"] == 2 and meta["info"]["ctl_steps"] == 2 and "report" not in meta["info"]
  with pytest.raises(ValueError, match="ctl_learning_rate must be > 0"):
    dataclasses.replace(cfg, ctl_learning_rate=0.0)


def test_the_twist_experiment_files_load():
  from tts_jax.config_files import load_config  # noqa: PLC0415
  cfg = load_config("experiments/train/modchain_twist.py")
  assert isinstance(cfg, TwistTrainConfig) and cfg.steps > 0 and cfg.ctl_steps > 0
  exp = load_config("experiments/modchain/twisted_smc.py")
  assert [m.twist for m in exp.methods if isinstance(m, ParticleFiltering)] == [False, True, False]
