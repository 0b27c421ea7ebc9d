"""Timing helper shared by the benchmark scripts."""

import statistics
import time

import jax


def timed(fn, *args, repeats: int = 3) -> tuple[float, float]:
  """(seconds of the first call incl. compilation, median seconds of `repeats` later calls)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)
