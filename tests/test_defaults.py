"""The shipped default models load and behave as their report says."""

import os

import numpy as np
import pytest

from tts_jax.eval.metrics import mean_pass_at_k
from tts_jax.tasks.shipped import DEFAULTS_DIR, load_default
from tts_jax.eval.model_report import REPORT_SEED, policy_pass_at_k, verifier_auc


@pytest.fixture(scope="module")
def defaults():
  return load_default("modchain")


def test_shipped_files_are_small():
  total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(DEFAULTS_DIR) for f in fs)
  assert total < 20 * 2 ** 20, total


def test_report_is_complete(defaults):
  r = defaults.report
  for key in ("test", "hard", "orm_auc", "prm_step_auc", "params", "training_seconds"):
    assert key in r, key
  t = r["training_seconds"]
  assert t["policy"] + t["orm"] + t["prm"] < 3600  # the models every experiment reads: under an hour
  assert t["total"] == pytest.approx(sum(v for k, v in t.items() if k != "total"), abs=0.1)
  if defaults.twist is not None:  # the optional twist (twisted SMC)
    assert "twist" in t and t["twist"] < 3600
  assert 0.15 <= r["hard"]["pass@1"] <= 0.5
  assert r["hard"]["pass@16"] >= 2 * r["hard"]["pass@1"]
  assert r["params"]["policy"] == defaults.policy.config.num_params()


@pytest.fixture(scope="module")
def fresh_sample(defaults):
  # 100 test problems x 4 samples with a fixed seed (not the report's draw).
  return policy_pass_at_k(defaults, "test", samples=4, max_new_tokens=96, seed=REPORT_SEED + 1,
                          num_problems=100)


def test_pass_at_1_matches_report_within_sampling_error(defaults, fresh_sample):
  correct, _, _ = fresh_sample
  per_problem = correct.mean(1)
  se = per_problem.std(ddof=1) / np.sqrt(len(per_problem))
  reported = defaults.report["test"]["pass@1"]
  assert abs(mean_pass_at_k(correct, 1) - reported) < 4 * se + 1e-9, (mean_pass_at_k(correct, 1), reported, se)


def test_verifiers_informative_but_imperfect(defaults, fresh_sample):
  correct, comps, problems = fresh_sample
  auc = verifier_auc(defaults, problems, comps, correct)
  assert 0.6 < auc["orm_auc"] < 0.999, auc
  assert 0.6 < auc["prm_step_auc"] < 0.999, auc


def test_unknown_default_is_named():
  with pytest.raises(FileNotFoundError, match="no default models for task 'nope'.*available: modchain"):
    load_default("nope")
