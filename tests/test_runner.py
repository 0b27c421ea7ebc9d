"""The experiment runner: resumes after a crash to byte-identical results; clear errors."""

import json
import os

import pytest

from tests.helpers import without_timing
from tts_jax.config_files import ConfigError, apply_overrides, load_config
from tts_jax.eval import Experiment
from tts_jax.eval.pool_methods import (RPC, AdaptiveConsistency, BestOfN, InverseEntropyVote, MajorityVote, PassAtK,
                                  ShortestMajority, WeightedMajority)
from tts_jax.eval.runner import ResultsMismatch, run_experiment
from tts_jax.tasks.shipped import DEFAULTS_DIR
from tts_jax.tasks import ModChain


@pytest.fixture(scope="module")
def models_dir():
  """The shipped default models: real samples, some right and some wrong."""
  return os.path.join(DEFAULTS_DIR, "modchain")


def experiment(models_dir, out_dir, **kw):
  base = dict(name="tiny", task=ModChain(), split="test", num_problems=6, models=models_dir,
              methods=(PassAtK(), MajorityVote(), BestOfN(verifier="orm"), WeightedMajority(verifier="prm"),
                       AdaptiveConsistency(), InverseEntropyVote(), ShortestMajority(), RPC(max_subsets=4)),
              budgets=(1, 2, 4), max_new_tokens=64, num_subsets=8, batch_problems=2,
              out_dir=str(out_dir))
  base.update(kw)
  return Experiment(**base)


def test_resume_after_crash_gives_identical_files(models_dir, tmp_path):
  full = run_experiment(experiment(models_dir, tmp_path / "full"), quiet=True)
  cut = experiment(models_dir, tmp_path / "cut")
  run_experiment(cut, stop_after_batches=2, quiet=True)
  path = tmp_path / "cut" / "results.jsonl"
  data = path.read_bytes()
  assert data.count(b"\n") == 2 * 2 * 3
  path.write_bytes(data + data[:37])  # a torn line left by kill -9 mid-write
  resumed = run_experiment(cut, quiet=True)
  assert (tmp_path / "full" / "results.jsonl").read_bytes() == path.read_bytes()
  assert without_timing(full) == without_timing(resumed)
  assert full["timing"]["batches_computed"] == 3 and resumed["timing"]["batches_computed"] == 1
  lines = [json.loads(l) for l in path.read_text().splitlines()]
  assert sorted((r["problem"], r["budget"]) for r in lines) == [(p, k) for p in range(6) for k in (1, 2, 4)]
  assert os.path.isfile(tmp_path / "cut" / "scaling.png")
  # Re-running a finished experiment recomputes nothing and changes nothing.
  again = run_experiment(cut, quiet=True)
  assert again["timing"]["batches_computed"] == 0 and again["timing"]["compilations"] == 0
  assert without_timing(again) == without_timing(full) and path.read_bytes() == (tmp_path / "full" / "results.jsonl").read_bytes()


def test_pools_drawn_ahead_change_nothing(models_dir, tmp_path, monkeypatch):
  """The runner draws batch b + 1's pool on a worker thread while batch b is selected: the
  results equal those of a run that draws every pool when its batch starts."""
  from tts_jax.eval import runner
  submitted = []
  real_submit = runner._NEXT_POOL.submit
  monkeypatch.setattr(runner._NEXT_POOL, "submit", lambda fn, *a: submitted.append(fn) or real_submit(fn, *a))
  ahead = run_experiment(experiment(models_dir, tmp_path / "ahead"), quiet=True)
  assert len(submitted) == 2  # batches 1 and 2 of 3
  monkeypatch.setattr(runner, "_pool_verifiers", lambda exp: None)  # no drawing ahead
  inline = run_experiment(experiment(models_dir, tmp_path / "inline"), quiet=True)
  assert len(submitted) == 2
  assert (tmp_path / "ahead" / "results.jsonl").read_bytes() == (tmp_path / "inline" / "results.jsonl").read_bytes()
  assert without_timing(ahead) == without_timing(inline)


def test_summary_is_consistent(models_dir, tmp_path):
  s = run_experiment(experiment(models_dir, tmp_path), quiet=True)
  oracle = s["methods"]["pass@k (oracle)"]
  assert 0 < oracle[0]["accuracy"] < oracle[-1]["accuracy"] < 1  # the pool has right and wrong samples
  for name, rows in s["methods"].items():
    for r, o in zip(rows, oracle):
      assert r["accuracy"] <= o["accuracy"] + 1e-6, name  # nothing beats the oracle (float32 metrics)
      assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
    assert all(a["flops"] <= b["flops"] for a, b in zip(rows, rows[1:]))
  # With one sample every method returns that sample: all equal pass@1 (exactly: the
  # n single-sample subsets are enumerated; metrics are float32 array code).
  for name, rows in s["methods"].items():
    assert abs(rows[0]["accuracy"] - oracle[0]["accuracy"]) < 1e-6, name
    assert rows[0]["mc_se"] == 0.0
  ver = s["methods"]["best-of-N (ORM)"]
  assert all(r["verifier_tokens"] > 0 for r in ver)
  assert all(r["verifier_tokens"] == 0 for r in s["methods"]["majority vote"])


def test_a_different_config_never_overwrites_results(models_dir, tmp_path):
  run_experiment(experiment(models_dir, tmp_path, num_problems=2), quiet=True)
  with pytest.raises(ResultsMismatch, match="holds results of a different experiment config"):
    run_experiment(experiment(models_dir, tmp_path, num_problems=4), quiet=True)


def test_config_errors(models_dir, tmp_path):
  with pytest.raises(ValueError, match="num_problems=900 but split 'test' has 500"):
    run_experiment(experiment(models_dir, tmp_path, num_problems=900), quiet=True)
  with pytest.raises(ValueError, match="budgets must be strictly increasing"):
    experiment(models_dir, tmp_path, budgets=(4, 2))
  with pytest.raises(ValueError, match="method names must be unique"):
    experiment(models_dir, tmp_path, methods=(MajorityVote(), MajorityVote()))
  cfg = load_config("experiments/modchain/scaling.py")
  assert apply_overrides(cfg, ["budgets=(1, 4)", "num_problems=10"]).budgets == (1, 4)
  with pytest.raises(ConfigError, match="unknown config key 'sampling.temp'"):
    apply_overrides(cfg, ["sampling.temp=0.5"])
  with pytest.raises(ConfigError, match="budgets=fast: expected a tuple"):
    apply_overrides(cfg, ["budgets=fast"])
  with pytest.raises(FileNotFoundError, match="no default models for task 'modchain' at /nope"):
    run_experiment(experiment("/nope", tmp_path / "x"), quiet=True)


def test_kill_minus_nine_then_rerun(models_dir, tmp_path):
  """A real `tts-jax run` killed with SIGKILL mid-run, then re-run, ends byte-identical."""
  import signal
  import subprocess
  import sys
  import time
  exp_file = tmp_path / "exp.py"
  exp_file.write_text(
      "from tts_jax.eval import Experiment\n"
      "from tts_jax.eval.pool_methods import MajorityVote, BestOfN, AdaptiveConsistency\n"
      "from tts_jax.tasks import ModChain\n"
      f"config = Experiment(name='kill', task=ModChain(), split='test', num_problems=8, models={models_dir!r},\n"
      "    methods=(MajorityVote(), BestOfN(verifier='orm'), AdaptiveConsistency()), budgets=(1, 2, 4),\n"
      "    max_new_tokens=64, num_subsets=8, batch_problems=2, out_dir='OUT')\n")
  cmd = lambda out: [sys.executable, "-m", "tts_jax.cli", "run", str(exp_file), "--set", f"out_dir={out}"]
  subprocess.run(cmd(tmp_path / "full"), check=True, capture_output=True)
  results = tmp_path / "killed" / "results.jsonl"
  proc = subprocess.Popen(cmd(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 900  # generous: a loaded 2-core machine compiles slowly
  while (time.time() < deadline and proc.poll() is None
         and (not results.exists() or results.read_bytes().count(b"\n") < 6)):
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  written = results.read_bytes().count(b"\n")
  assert 6 <= written < 24, written  # killed after the first batch, before the last
  subprocess.run(cmd(tmp_path / "killed"), check=True, capture_output=True)
  assert results.read_bytes() == (tmp_path / "full" / "results.jsonl").read_bytes()


def test_resume_is_keyed_by_problem_and_budget(models_dir, tmp_path):
  """Records are matched by (problem, budget), not by counting lines: a duplicated line is
  dropped, a deleted line costs its batch only (no hole, no duplicate), a short last batch
  counts as done, and the file ends byte-identical to an uninterrupted run's."""
  ref = tmp_path / "ref"
  run_experiment(experiment(models_dir, ref, num_problems=5, methods=(MajorityVote(), BestOfN(verifier="orm"))),
                 quiet=True)
  want = (ref / "results.jsonl").read_bytes()
  lines = want.splitlines(keepends=True)
  assert len(lines) == 5 * 3  # 3 batches, the last holding one problem
  out = tmp_path / "edited"
  exp = experiment(models_dir, out, num_problems=5, methods=(MajorityVote(), BestOfN(verifier="orm")))
  os.makedirs(out)
  run_experiment(exp, stop_after_batches=0, quiet=True)  # writes config.json only
  # problem 1's budget-2 line deleted (batch 0 incomplete), a line of batch 1 duplicated, batch 2 whole.
  (out / "results.jsonl").write_bytes(b"".join(lines[:4] + lines[5:9] + lines[7:8] + lines[9:]))
  s = run_experiment(exp, quiet=True)
  assert s["timing"]["batches_computed"] == 1  # batch 0 only
  assert (out / "results.jsonl").read_bytes() == want
  again = run_experiment(exp, quiet=True)  # the short last batch is not recomputed on every re-run
  assert again["timing"]["batches_computed"] == 0


def test_config_json_guards_the_results(models_dir, tmp_path):
  exp = experiment(models_dir, tmp_path, num_problems=2, methods=(MajorityVote(),))
  run_experiment(exp, quiet=True)
  cfg = tmp_path / "config.json"
  cfg.write_text('{"name": "tiny", ')  # torn
  with pytest.raises(ResultsMismatch, match="config.json is not valid JSON"):
    run_experiment(exp, quiet=True)
  cfg.unlink()  # deleted: the results could be another seed's
  with pytest.raises(ResultsMismatch, match="results.jsonl exists but .*config.json does not"):
    run_experiment(experiment(models_dir, tmp_path, num_problems=2, methods=(MajorityVote(),), seed=1), quiet=True)
  with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):  # nothing written for a bad setting
    from tts_jax.sampling import SamplingParams
    run_experiment(experiment(models_dir, tmp_path / "new", sampling=SamplingParams(top_p=1.5)), quiet=True)
  assert not (tmp_path / "new").exists()


def test_the_first_batch_finds_its_pool_programs_compiled(models_dir, tmp_path):
  """`compile_pool_methods` (the runner's warm-up, on a stand-in pool) compiles every program
  the pool methods then run on a real batch of those shapes: the real batch's methods compile
  and load nothing. (Shapes no other test uses, so every program is new to this process.)"""
  from tts_jax.eval.batch import Batch
  from tts_jax.eval.runner import _load_models
  from tts_jax.eval.timing import Timer
  from tts_jax.eval import ComputeOptimal, SlimSC
  from tts_jax.eval.warmup import compile_pool_methods, compiles_on_stand_in
  exp = experiment(models_dir, tmp_path, budgets=(1, 3, 5), num_subsets=5, batch_problems=3, max_new_tokens=40)
  assert all(compiles_on_stand_in(m) for m in exp.methods)
  # Methods that read more than the pool never see a stand-in (the calibration keeps its batches).
  assert not compiles_on_stand_in(ComputeOptimal()) and not compiles_on_stand_in(SlimSC())
  models, problems = _load_models(exp), list(exp.task.split(exp.split)[:3])
  with Timer() as warm:
    compile_pool_methods(exp, models, problems, 0, None, warm)
  assert warm.compilations + warm.cache_hits > 0
  batch = Batch(experiment=exp, models=models, problems=problems, start=0)
  batch.pool(("orm", "prm"))  # sampled and scored: not the warm-up's programs
  with Timer() as real:
    for i, m in enumerate(exp.methods):
      m.evaluate(batch, i)
  assert (real.compilations, real.cache_hits) == (0, 0)
