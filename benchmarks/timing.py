"""Timing helpers shared by the benchmark scripts."""

import statistics
import time

import jax
import jax.numpy as jnp


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


def copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 10) -> float:
  """Bytes/s of the device's memory (read + write) for a large copy-like kernel.

  A `nbytes` buffer (>= 1 GB by default, far beyond any cache) is scaled `repeats` times
  in a chain (each pass reads the last one's output, so only two buffers live); the host
  blocks once at the end, so dispatch overlaps the device work and the host timer
  measures the device (the best of three such runs).
  """
  x = jnp.ones((nbytes // 4,), jnp.float32)
  f = jax.jit(lambda v: v * 1.0001)
  jax.block_until_ready(f(x))
  best = float("inf")
  for _ in range(3):
    t0 = time.perf_counter()
    y = x
    for _ in range(repeats):
      y = f(y)
    jax.block_until_ready(y)
    best = min(best, (time.perf_counter() - t0) / repeats)
  return 2 * x.nbytes / best
