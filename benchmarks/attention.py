"""Decode attention for N particles sharing a prompt: shared-prefix (cascade) vs dense.

    python benchmarks/attention.py [--particles 16 64 256] [--prompts 1024 4096 16384] [--suffix 512]
                                   [--pallas] [--dtype bfloat16]

One layer's decode attention (32 query heads, 8 KV heads, head dim 128, as in an 8B
Llama) for one prompt and N particles, each with --suffix private tokens:
  xla-dense    jax.nn.dot_product_attention over [prompt, suffix] per particle: the
               prompt KV is broadcast and read N times (what a per-sequence engine does);
  xla-cascade  the library's XLA path: one attention over the shared prompt KV (the N
               particles are the query rows), one over the suffixes, log-sum-exp merge;
  pallas       `tts_jax.kernels.cascade_decode` (--pallas; compiled on GPU/TPU, interpret
               mode on CPU, where its time means nothing).
Reports the median time, the KV bytes each path must read at least (prompt once +
suffixes) and the bandwidth that implies, against the peak copy bandwidth measured
on the same device (a >= 1 GB buffer scaled 10 times back to back).
"""

from __future__ import annotations

import argparse
import jax
import jax.numpy as jnp

from tts_jax.kernels import cascade_decode, cascade_decode_reference
from timing import copy_bandwidth, timed

HQ, HKV, D = 32, 8, 128


def dense(q, pk, pv, plen, sk, sv, mask):
  """Every particle's own copy of the prompt KV and one dense attention per particle (the
  caches come head-major, [B, Hkv, Tp, D] and [B, N, Hkv, Ts, D], and are read token-major here)."""
  b, n, hkv, g, d = q.shape
  tp = pk.shape[2]
  pk, pv, sk, sv = (jnp.swapaxes(x, -3, -2) for x in (pk, pv, sk, sv))
  keys = jnp.concatenate([jnp.broadcast_to(pk[:, None], (b, n) + pk.shape[1:]), sk], axis=2)
  vals = jnp.concatenate([jnp.broadcast_to(pv[:, None], (b, n) + pv.shape[1:]), sv], axis=2)
  allowed = jnp.concatenate([jnp.broadcast_to((jnp.arange(tp) < plen[:, None])[:, None], (b, n, tp)), mask], axis=2)
  out = jax.nn.dot_product_attention(q.reshape(b * n, 1, hkv * g, d), keys.reshape((b * n,) + keys.shape[2:]),
                                     vals.reshape((b * n,) + vals.shape[2:]),
                                     mask=allowed.reshape(b * n, 1, 1, -1))
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--particles", type=int, nargs="+", default=[16, 64])
  ap.add_argument("--prompts", type=int, nargs="+", default=[1024, 4096])
  ap.add_argument("--suffix", type=int, default=512)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--pallas", action="store_true")
  ap.add_argument("--copy-bytes", type=int, default=1 << 30, help="buffer of the bandwidth measurement")
  a = ap.parse_args()
  dt = jnp.dtype(a.dtype)
  peak = copy_bandwidth(a.copy_bytes)
  interpret = jax.default_backend() == "cpu"
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); dtype {a.dtype}; one layer, {HQ} q heads, "
        f"{HKV} kv heads, D {D}; suffix {a.suffix}; peak copy bandwidth {peak / 1e9:.1f} GB/s")
  print(f"{'N':>4s} {'prompt':>6s} {'path':12s} {'ms':>9s} {'min KV MB':>9s} {'GB/s':>7s} {'% peak':>6s} {'vs dense':>8s}")
  paths = {"xla-dense": jax.jit(dense), "xla-cascade": jax.jit(lambda *x: cascade_decode_reference(*x)[0])}
  if a.pallas:
    paths["pallas"] = lambda *x: cascade_decode(*x, interpret=interpret)[0]
  for tp in a.prompts:
    for n in a.particles:
      ks = jax.random.split(jax.random.key(n + tp), 5)
      q = jax.random.normal(ks[0], (1, n, HKV, HQ // HKV, D), dt)
      pk, pv = (jax.random.normal(k, (1, HKV, tp, D), dt) for k in ks[1:3])
      sk, sv = (jax.random.normal(k, (1, n, HKV, a.suffix, D), dt) for k in ks[3:5])
      plen = jnp.asarray([tp], jnp.int32)
      mask = jnp.ones((1, n, a.suffix), bool)
      min_bytes = 2 * (tp + n * a.suffix) * HKV * D * dt.itemsize
      base = None
      for name, f in paths.items():
        _, t = timed(f, q, pk, pv, plen, sk, sv, mask, repeats=3)
        base = t if base is None else base
        bw = min_bytes / t
        print(f"{n:4d} {tp:6d} {name:12s} {1e3 * t:9.2f} {min_bytes / 1e6:9.1f} {bw / 1e9:7.1f} {100 * bw / peak:6.1f} "
              f"{base / t:7.2f}x")


if __name__ == "__main__":
  main()
