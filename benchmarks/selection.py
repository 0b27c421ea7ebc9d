"""RPC selection on device vs the host reference (numpy + scipy per subset), side by side.

    python benchmarks/selection.py [--problems 25] [--subsets 64] [--k 4 8 16 32]
    python benchmarks/selection.py --layouts [--subsets 16] [--k 4 8 16 32 64]
    python benchmarks/selection.py --fusions [--subsets 16] [--k 4 8 16 32 64]
    python benchmarks/selection.py --ranks [--problems 25] [--subsets 64] [--k 1 2 4 8 16 32 64]

The pool shape of the main experiment's batches (25 problems); each (problem, subset)
needs one Weibull-mixture fit. Prints seconds per call (after compilation) and the ratio.
--layouts times the fit alone in its two layouts: `fit_weibull_mixture` on all rows at
once (batch-minor: fits on the minor axis, the library's) against the same function
vmapped over the rows (one fit per lane, fits on the major axis: what a per-row function
vmapped gives), compile and run, median of 5 runs, and their largest parameter difference.
--ranks times a batch's random subset orders (`tts_jax.eval.subsets.random_ranks`, one row
per budget in --k, pools of max(--k) samples) against the same orders from a stable argsort.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.reference_rpc import rpc_select  # noqa: E402
from tts_jax.eval.subsets import inverse_permutation, random_ranks  # noqa: E402
from tts_jax.selection import fit_weibull_mixture, rpc_compiler_options, rpc_vote  # noqa: E402


def _timed(fn, *args, runs: int = 5, options=None):
  """(compile s, median run s, output) of jax.jit(fn) on args, compiled with XLA `options`."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile(compiler_options=options)
  compile_s = time.perf_counter() - t0
  out = jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return compile_s, float(np.median(times)), np.asarray(out)


def layouts(a) -> None:
  rng = np.random.default_rng(0)
  print(f"backend {jax.default_backend()}; {a.problems} problems x {a.subsets} subsets: one fit each")
  print(f"{'k':>4s} {'vmapped compile s':>18s} {'batched compile s':>18s} {'vmapped run ms':>15s} "
        f"{'batched run ms':>15s} {'run ratio':>9s} {'max param diff':>15s}")
  for k in a.k:
    x = jnp.asarray(rng.uniform(0.001, 1.0, (a.problems * a.subsets, k)), jnp.float32)
    cv, rv, ov = _timed(jax.vmap(fit_weibull_mixture), x)
    cb, rb, ob = _timed(fit_weibull_mixture, x)
    print(f"{k:4d} {cv:18.2f} {cb:18.2f} {rv * 1e3:15.1f} {rb * 1e3:15.1f} {rv / rb:8.2f}x "
          f"{np.max(np.abs(ov - ob) / np.maximum(np.abs(ov), 1e-6)):15.2e}")


def fusions(a) -> None:
  rng = np.random.default_rng(0)
  options = rpc_compiler_options()
  print(f"backend {jax.default_backend()}; {a.problems} problems x {a.subsets} subsets; options {options}")
  print(f"{'k':>4s} {'default compile s':>18s} {'options compile s':>18s} {'default run ms':>15s} "
        f"{'options run ms':>15s} {'run ratio':>9s} {'same answer':>11s}")
  for k in a.k:
    shape = (a.problems, a.subsets, k)
    args = (jnp.asarray(rng.integers(-1, 4, shape)), jnp.asarray(np.log(rng.uniform(0.001, 1.0, shape)), jnp.float32),
            jnp.asarray(rng.integers(0, 10 ** 6, shape)))
    vote = lambda answers, lp, seq: rpc_vote(answers, lp, seq, num_answers=k)  # noqa: E731
    cd, rd, od = _timed(vote, *args)
    co, ro, oo = _timed(vote, *args, options=options)
    print(f"{k:4d} {cd:18.2f} {co:18.2f} {rd * 1e3:15.1f} {ro * 1e3:15.1f} {rd / ro:8.2f}x {np.mean(od == oo):11.4f}")


def ranks(a) -> None:
  n = max(a.k)
  keys = jax.random.split(jax.random.key(0), len(a.k) * a.problems).reshape(len(a.k), a.problems)

  def by_argsort(keys):
    u = jax.vmap(lambda key: jax.random.uniform(key, (a.subsets, n)))(keys.reshape(-1))
    return inverse_permutation(jnp.argsort(u, axis=-1, stable=True)).reshape(keys.shape + (a.subsets, n))

  print(f"backend {jax.default_backend()}; ranks int32{list(keys.shape) + [a.subsets, n]}")
  _, argsort_s, want = _timed(by_argsort, keys, runs=15)
  _, lib_s, got = _timed(lambda keys: random_ranks(keys, n, a.subsets), keys, runs=15)
  print(f"argsort {argsort_s * 1e3:.1f} ms, random_ranks {lib_s * 1e3:.1f} ms: {argsort_s / lib_s:.2f}x; "
        f"identical: {np.array_equal(want, got)}")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--problems", type=int, default=25)
  ap.add_argument("--subsets", type=int, default=64)
  ap.add_argument("--k", type=int, nargs="+", default=[4, 8, 16, 32])
  ap.add_argument("--layouts", action="store_true", help="time the fit's two layouts (see the docstring)")
  ap.add_argument("--fusions", action="store_true", help="time RPC with default and the library's XLA options")
  ap.add_argument("--ranks", action="store_true", help="time the random subset orders (see the docstring)")
  a = ap.parse_args()
  if a.ranks:
    return ranks(a)
  if a.layouts:
    return layouts(a)
  if a.fusions:
    return fusions(a)
  rng = np.random.default_rng(0)
  vote = jax.jit(rpc_vote, static_argnames=("prune", "num_answers"))
  print(f"backend {jax.default_backend()}; {a.problems} problems x {a.subsets} subsets")
  print(f"{'k':>4s} {'host s':>8s} {'device s':>9s} {'compile s':>9s} {'speedup':>8s} {'agree':>6s}")
  for k in a.k:
    shape = (a.problems, a.subsets, k)
    answers = rng.integers(-1, 4, shape)
    lp = np.log(rng.uniform(0.001, 1.0, shape))
    seq = rng.integers(0, 10 ** 6, shape)
    t0 = time.perf_counter()
    jax.block_until_ready(vote(answers, lp, seq, num_answers=k))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = np.asarray(jax.block_until_ready(vote(answers, lp, seq, num_answers=k)))
    dev = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = np.array([[rpc_select(answers[i, j], lp[i, j], seq[i, j]) for j in range(a.subsets)]
                    for i in range(a.problems)])
    host = time.perf_counter() - t0
    print(f"{k:4d} {host:8.2f} {dev:9.3f} {compile_s:9.1f} {host / dev:7.1f}x {np.mean(got == ref):6.2f}")


if __name__ == "__main__":
  main()
