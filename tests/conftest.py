"""Tests do not write JAX's persistent compilation cache into the user's cache directory
(the test of the cache itself points it at a temporary directory), and compile with XLA's
expensive optimisations off (`jax_disable_most_optimizations`, as JAX's own test suite can):
the suite is dominated by compiling small programs, not by running them. Set before JAX is
imported, so the subprocesses and notebook kernels the tests start inherit both."""

import os

os.environ.setdefault("TTS_JAX_COMPILATION_CACHE", "off")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
