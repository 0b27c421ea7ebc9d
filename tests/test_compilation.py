"""No recompilation across a run's batches, and a second run compiles nothing (the
persistent compilation cache)."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.eval import BeamSearch, Experiment
from tts_jax.eval.pool_methods import RPC, AdaptiveConsistency, BestOfN, MajorityVote, PassAtK, WeightedMajority
from tts_jax.eval.timing import Timer
from tts_jax.models import pad_prompts
from tts_jax.search.ets import distinct_pages, page_keys
from tts_jax.smc.particles import Particles
from tts_jax.tasks import ModChain, task_prompts
from tts_jax.tasks.shipped import DEFAULTS_DIR

MODELS = os.path.join(DEFAULTS_DIR, "modchain")


def _experiment(out_dir, num_problems=6):
  methods = (PassAtK(), MajorityVote(), BestOfN(verifier="orm"), WeightedMajority(verifier="prm"),
             AdaptiveConsistency(), RPC(max_subsets=4), BeamSearch(verifier="prm", expansions=2))
  return Experiment(name="compile-count", task=ModChain(), split="hard", num_problems=num_problems, models=MODELS,
                    methods=methods, budgets=(2, 4), max_new_tokens=64, num_subsets=8, batch_problems=2, out_dir=str(out_dir))


def _run_in_subprocess(out_dir, cache_dir) -> dict:
  code = ("import sys; sys.path.insert(0, sys.argv[1]); from tests.test_compilation import _experiment; "
          "from tts_jax.eval.runner import run_experiment; import json; "
          "print(json.dumps(run_experiment(_experiment(sys.argv[2]), quiet=True)['timing']))")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
  env["TTS_JAX_COMPILATION_CACHE"] = str(cache_dir)  # its own cache, not the test run's (conftest.py)
  out = subprocess.run([sys.executable, "-c", code, root, str(out_dir)], env=env, capture_output=True, text=True,
                       check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_batches_after_the_first_compile_nothing_and_a_second_run_nothing(tmp_path):
  """Prompts whose per-batch padded widths differ (ragged across batches): every batch after
  the first reuses the first batch's compiled code. A second run (a new process, a new output
  directory: all recomputed) loads every program from the persistent compilation cache."""
  exp = _experiment(tmp_path / "run")
  problems = list(exp.task.split(exp.split)[:exp.num_problems])
  widths = {pad_prompts(task_prompts(exp.task, problems[i:i + 2]))[0].shape[1] for i in range(0, 6, 2)}
  assert len(widths) > 1, widths  # without one width per run, batches would recompile
  first = _run_in_subprocess(tmp_path / "a", tmp_path / "cache")
  assert len(first["compilations_per_batch"]) == 3 and first["compilations_per_batch"][1:] == [0, 0], first
  assert first["compilations"] > 0 and os.listdir(tmp_path / "cache")
  second = _run_in_subprocess(tmp_path / "b", tmp_path / "cache")
  assert second["batches_computed"] == 3
  assert second["compilations"] == 0 and second["compilation_cache_hits"] > 0, second


def test_a_finished_search_is_read_by_one_program_per_quantity():
  """Reading an engine's finished particles on the host (final weights, KV pages held) compiles
  or loads one program per quantity and shape, not one per operation (op by op they were ~20
  programs per budget of a search; the NaN check is now in the engine's own program), with
  the op-by-op numbers bit for bit."""
  rng = np.random.default_rng(0)
  b, n, t = 3, 7, 40  # shapes no other test reads, so nothing is compiled already
  log_weights = rng.normal(scale=5.0, size=(b, n)).astype(np.float32)
  log_weights[0, :3] = -np.inf
  p = SimpleNamespace(log_weights=log_weights, log_z=np.zeros(b, np.float32),
                      log_potential=rng.normal(size=(b, n)).astype(np.float32))
  tokens, lengths = rng.integers(0, 50, size=(b, n, t)), rng.integers(0, t + 1, size=(b, n))
  read = lambda: (Particles.normalized_weights(p), distinct_pages(tokens, lengths, 16))  # noqa: E731
  with Timer() as timer:
    got = read()
  assert timer.compilations + timer.cache_hits <= 2, (timer.compilations, timer.cache_hits)
  # What was read before, eagerly, op by op (jax.nn's own functions as they dispatch outside jit).
  want = (jax.nn.softmax(jnp.asarray(log_weights), axis=-1),
          page_keys(jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32), 16))
  np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
  key, end = jax.device_get(want[1])
  assert list(got[1]) == [len({(k, e, j) for k, e, j in zip(key[i].ravel(), end[i].ravel(),
                                                          np.tile(np.arange(key.shape[-1]), n)) if e >= 0})
                          for i in range(b)]
