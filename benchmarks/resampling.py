"""Resampling step: paged suffix cache vs contiguous suffix cache.

    python benchmarks/resampling.py [--particles 64] [--suffix 512] [--filled 300] [--page 16]

A 6-layer cache (Hkv=2, D=64, float32) of N particles per prompt, each with --filled
suffix tokens, is resampled with multinomial ancestors from skewed weights (about
N/3 distinct survivors, like a real particle filter). Contiguous: `KVCache.gather`
copies every particle's whole suffix KV. Paged: `PagedKVCache.gather` moves block
tables and copies only the duplicated particles' last, partly filled page.
Reports bytes moved per step (counted from the shapes) and the median time of a
jitted step over --repeats runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.models.lm import KVCache, PrefixCache
from tts_jax.models.paged import init_paged_cache


class Cfg:
  num_layers, num_kv_heads, head_dim, jnp_dtype = 6, 2, 64, jnp.float32


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--particles", type=int, default=64)
  ap.add_argument("--suffix", type=int, default=512)
  ap.add_argument("--filled", type=int, default=300)
  ap.add_argument("--page", type=int, default=16)
  ap.add_argument("--repeats", type=int, default=20)
  a = ap.parse_args()
  n, ts, c = a.particles, a.suffix, Cfg
  prefix = PrefixCache(k=(), v=(), lengths=jnp.ones((1,), jnp.int32))
  key = jax.random.key(0)
  shape = (1, n, ts, c.num_kv_heads, c.head_dim)
  kv = tuple(jax.random.normal(jax.random.fold_in(key, i), shape) for i in range(c.num_layers))
  mask = jnp.broadcast_to(jnp.arange(ts) < a.filled, (1, n, ts))
  kv2 = tuple(x + 1 for x in kv)
  flat = KVCache(prefix=prefix, k=kv, v=kv2, mask=mask, lengths=jnp.full((1, n), a.filled, jnp.int32),
                 step=jnp.zeros((), jnp.int32), compact=True)
  paged = init_paged_cache(PrefixCache(k=(), v=(), lengths=jnp.ones((1,), jnp.int32)), c, n, ts, page_size=a.page)
  used = -(-a.filled // a.page)
  table = (jnp.arange(n)[:, None] * used + jnp.arange(paged.table.shape[-1])[None, :])
  table = jnp.where(jnp.arange(paged.table.shape[-1])[None, :] < used, table, -1)[None].astype(jnp.int32)
  paged = paged.replace(table=table, lengths=jnp.full((1, n), a.filled, jnp.int32))
  paged = paged.replace(refcount=paged.recount())
  logw = 3.0 * jax.random.normal(jax.random.key(1), (n,))
  anc = jax.random.categorical(jax.random.key(2), logw, shape=(n,))[None].astype(jnp.int32)
  distinct = len(np.unique(np.asarray(anc)))
  partial = a.filled % a.page != 0
  elt = jnp.dtype(c.jnp_dtype).itemsize
  flat_bytes = 2 * c.num_layers * n * ts * c.num_kv_heads * c.head_dim * elt  # read + write every suffix
  page_bytes = a.page * c.num_kv_heads * c.head_dim * elt
  copies = (n - distinct) if partial else 0  # duplicated particles copy their partial last page
  paged_bytes = 2 * (2 * c.num_layers * copies * page_bytes) + 2 * table.size * 4

  def bench(fn, x, donate):
    # The paged cache is timed with its buffers donated, as in the engine's loop where the cache
    # is loop-carried (its page copies are then in place); the contiguous gather is a full copy
    # either way and is timed without donation, which measured faster for it.
    f = jax.jit(fn, donate_argnums=0 if donate else ())
    x = jax.block_until_ready(f(x, anc))
    ts_ = []
    for _ in range(a.repeats):
      t0 = time.perf_counter()
      x = jax.block_until_ready(f(x, anc))
      ts_.append(time.perf_counter() - t0)
    return statistics.median(ts_)

  t_flat = bench(lambda x, an: x.gather(an), flat, False)
  t_paged = bench(lambda x, an: x.gather(an), paged, True)
  print(f"N={n} particles, suffix capacity {ts}, {a.filled} tokens filled, page {a.page}, "
        f"{distinct} distinct ancestors; 6 layers x Hkv 2 x D 64 float32; backend {jax.default_backend()}")
  print(f"{'cache':12s} {'bytes moved':>14s} {'time ms':>9s}")
  print(f"{'contiguous':12s} {flat_bytes:14,d} {1e3 * t_flat:9.3f}")
  print(f"{'paged':12s} {paged_bytes:14,d} {1e3 * t_paged:9.3f}")
  print(f"paged / contiguous: bytes {paged_bytes / flat_bytes:.4f}, time {t_paged / t_flat:.3f}")


if __name__ == "__main__":
  main()
