"""Tests do not write JAX's persistent compilation cache into the user's cache directory
(the test of the cache itself points it at a temporary directory), and compile with XLA's
expensive optimisations off (`jax_disable_most_optimizations`, as JAX's own test suite can):
the suite is dominated by compiling small programs, not by running them. Set before JAX is
imported, so the subprocesses and notebook kernels the tests start inherit both.

After each test module the compiled code of that module is dropped (`jax.clear_caches`): a
worker that keeps every executable of the suite grows past 6 GB and has crashed inside XLA's
CPU compiler (a segfault in a later compile, twice in three full runs)."""

import gc
import os

os.environ.setdefault("TTS_JAX_COMPILATION_CACHE", "off")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402  (after the environment above)
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_code_after_each_module():
  yield
  jax.clear_caches()
  gc.collect()
