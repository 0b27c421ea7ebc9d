"""Tests do not write JAX's persistent compilation cache into the user's cache directory, and
compile with XLA's
expensive optimisations off (`jax_disable_most_optimizations`, as JAX's own test suite can):
the suite is dominated by compiling small programs, not by running them. Set before JAX is
imported, so the subprocesses and notebook kernels the tests start inherit both.

One compilation cache serves the whole run instead: a temporary directory made by the first
pytest process (xdist's controller, before it starts the workers) and named in
JAX_COMPILATION_CACHE_DIR, which every worker, subprocess and notebook kernel reads when JAX
starts. Tests compile the same programs again and again (the shipped models at the runner's
shapes, one module after another, in several processes); each is compiled once per run. The
test of the cache itself (test_compilation) runs its subprocesses without it.

The modules that take minutes run first (`pytest_collection_modifyitems`): xdist's worksteal
hands each worker a contiguous half of the collection and lets an idle worker steal from the
end of another's queue, so heavy tests early leave light ones to balance the end of the run
(last measured: 83% of both cores busy with collection order).

After each test module the compiled code of that module is dropped (`jax.clear_caches`): a
worker that keeps every executable of the suite grows past 6 GB and has crashed inside XLA's
CPU compiler (a segfault in a later compile, twice in three full runs)."""

import gc
import os
import shutil
import tempfile

os.environ.setdefault("TTS_JAX_COMPILATION_CACHE", "off")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="tts_jax_tests_jax_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"  # not the many trivial programs

import jax  # noqa: E402  (after the environment above)
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_code_after_each_module():
  yield
  jax.clear_caches()
  gc.collect()


def pytest_unconfigure(config):
  """The process that made the run's compilation cache removes it (the controller, last)."""
  if _OWN_CACHE and not hasattr(config, "workerinput"):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


# Modules by total test time, heaviest first (`pytest -n auto --durations=80`, 2026-12-03).
HEAVY_FIRST = ("test_parallel", "test_compilation", "test_notebooks", "test_task_twist", "test_search_methods",
               "test_math_smoke", "test_runner", "test_ets", "test_kernels", "test_mcts")


def pytest_collection_modifyitems(session, config, items):
  """Heavy modules first, each module's tests kept together and in order (module fixtures)."""
  def rank(item):
    name = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
    return HEAVY_FIRST.index(name) if name in HEAVY_FIRST else len(HEAVY_FIRST)
  order = {id(item): i for i, item in enumerate(items)}
  items.sort(key=lambda item: (rank(item), order[id(item)]))
