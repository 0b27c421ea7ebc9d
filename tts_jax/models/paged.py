"""A paged suffix KV cache: zero-copy resampling for particles.

Each prompt owns a pool of P pages of `page_size` slots (per layer: k, v
[B, P, page_size, Hkv, D]); particle n of prompt b maps its suffix positions to
pages through its block table `table[b, n]` (position j lives in page
table[b, n, j // page_size] at offset j % page_size). `refcount[b, p]` counts the
particles whose used pages include p; a page with count 0 is free.

Resampling / beam selection (`gather`) moves block tables, not KV: full pages are
shared between the copies of a particle. Only the last, partly filled page of each
duplicated particle is copied (copy-on-write: the first copy keeps the page, every
other copy gets a fresh page with the same content), because the copies will write
different tokens into its free slots. Reference counts are recomputed from the
block tables at every selection, so a page no particle uses is free again at once
(no leaks by construction).

When a write needs a page and none is free, the write is dropped (no other
particle's page is touched) and `oom[b]` is set; `check_pages` raises a clear error.

Trees (`tts_jax.search.mcts`) keep one particle per node and grow a node's children in a
working cache of K particles over the same pages: `branch` copies the node's block table
K times (its full pages shared, its partial last page copied for all children but the
first; the pages of every other node stay taken, `held`) and `adopt` writes the grown
children's tables back into node slots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from tts_jax.kernels.reference import heads_major


@struct.dataclass
class PagedKVCache:
  """prefix: the prompts' PrefixCache. k, v: tuples over layers of [B, P, page_size, Hkv, D].
  table: int32[B, N, M] page ids (M = pages per particle; -1: none); refcount: int32[B, P];
  lengths: int32[B, N] suffix tokens per particle; oom: bool[B] a write found no free page.
  held: optional int32[B, P] references from block tables outside this cache (a tree's other
  nodes while its children grow, `branch`): those pages are never handed out."""

  prefix: object
  k: tuple
  v: tuple
  table: jax.Array
  refcount: jax.Array
  lengths: jax.Array
  oom: jax.Array
  held: jax.Array | None = None
  page_size: int = struct.field(pytree_node=False, default=16)

  @property
  def capacity(self) -> int:
    """Suffix slots per particle (M * page_size)."""
    return self.table.shape[-1] * self.page_size

  @property
  def num_pages(self) -> int:
    return self.refcount.shape[-1]

  def free_pages(self) -> jax.Array:
    """int32[B] free pages per prompt."""
    return jnp.sum(self.refcount == 0, axis=-1)

  def used_pages(self) -> jax.Array:
    """int32[B, N] pages each particle uses: ceil(length / page_size)."""
    return (self.lengths + self.page_size - 1) // self.page_size

  def recount(self) -> jax.Array:
    """int32[B, P] reference counts recomputed from the block tables (plus `held`)."""
    b, n, m = self.table.shape
    used = (jnp.arange(m)[None, None, :] < self.used_pages()[..., None]) & (self.table >= 0)
    rows = jnp.broadcast_to(jnp.arange(b)[:, None, None], (b, n, m))
    start = jnp.zeros((b, self.num_pages), jnp.int32) if self.held is None else self.held
    return start.at[rows, jnp.where(used, self.table, self.num_pages)].add(1, mode="drop")

  def _alloc(self, need: jax.Array):
    """One fresh page for every particle with need bool[B, N] -> (int32[B, N] pages, -1 where none;
    refcount; oom bool[B])."""
    free = self.refcount == 0
    free_ids = jnp.argsort(~free, axis=-1, stable=True)  # free pages first, in page order
    rank = jnp.cumsum(need, axis=1) - 1
    ok = need & (rank < jnp.sum(free, axis=-1, keepdims=True))
    pages = jnp.where(ok, jnp.take_along_axis(free_ids, jnp.clip(rank, 0, self.num_pages - 1), axis=1), -1)
    rows = jnp.broadcast_to(jnp.arange(need.shape[0])[:, None], need.shape)
    refcount = self.refcount.at[rows, jnp.where(ok, pages, self.num_pages)].add(1, mode="drop")
    return pages, refcount, jnp.any(need & ~ok, axis=-1)

  def prepare_write(self, active: jax.Array):
    """Before a decode step: give every active particle whose next slot starts a page a fresh page.

    Returns (cache with updated table / refcount / oom, page int32[B, N] and offset int32[B, N]
    of each active particle's next slot; page = P (dropped) where it may not write)."""
    ps = self.page_size
    slot = self.lengths
    idx = slot // ps
    need = active & (slot % ps == 0) & (idx < self.table.shape[-1])
    pages, refcount, oom = self._alloc(need)
    onehot = jax.nn.one_hot(jnp.clip(idx, 0, self.table.shape[-1] - 1), self.table.shape[-1], dtype=bool)
    table = jnp.where(onehot & (pages >= 0)[..., None], pages[..., None], self.table)
    page = jnp.take_along_axis(table, jnp.clip(idx, 0, self.table.shape[-1] - 1)[..., None], axis=-1)[..., 0]
    writable = active & (idx < self.table.shape[-1]) & (page >= 0)  # -1: the page was never allocated
    return (self.replace(table=table, refcount=refcount, oom=self.oom | oom | jnp.any(active & (idx >= self.table.shape[-1]), axis=-1)),
            jnp.where(writable, page, self.num_pages), slot % ps)

  def write_layer(self, layer: int, page, offset, k_new, v_new):
    """Scatter one layer's new k, v [B, N, Hkv, D] into (page, offset) of every particle."""
    b, n = page.shape
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, n))
    k = self.k[layer].at[rows, page, offset].set(k_new.astype(self.k[layer].dtype), mode="drop")
    v = self.v[layer].at[rows, page, offset].set(v_new.astype(self.v[layer].dtype), mode="drop")
    return k, v

  def view(self, k_pages, v_pages):
    """The contiguous suffix view of one layer, head-major like `KVCache`'s suffix:
    [B, N, Hkv, M * page_size, D] (k, v). One gather of the particles' pages."""
    b, n, m = self.table.shape
    take = lambda x: jax.vmap(lambda xb, tb: xb[jnp.clip(tb, 0, self.num_pages - 1)])(x, self.table)
    shape = (b, n, m * self.page_size) + k_pages.shape[3:]
    return tuple(heads_major(take(x).reshape(shape)) for x in (k_pages, v_pages))

  def mask(self, lengths=None) -> jax.Array:
    """bool[B, N, capacity]: slots that hold a token."""
    lengths = self.lengths if lengths is None else lengths
    return jnp.arange(self.capacity)[None, None, :] < lengths[..., None]

  def gather(self, ancestors: jax.Array) -> "PagedKVCache":
    """Particles `ancestors` int32[B, N']: block tables move; the duplicated particles'
    last partial pages are copied (copy-on-write); reference counts are recomputed."""
    c = self.replace(table=_take(self.table, ancestors), lengths=_take(self.lengths, ancestors))
    return c.replace(refcount=c.recount())._copy_shared_partials(jnp.ones(ancestors.shape[:1], bool))

  def branch(self, parents: jax.Array, live: jax.Array) -> "PagedKVCache":
    """A working cache of N' particles continuing particles `parents` int32[B, N'] of this
    one (for prompts with live bool[B]; the others get no pages), while every particle of
    this cache keeps its pages (`held`): the parents' full pages are shared, a partial last
    page is kept by the first copy and copied for the others. `adopt` takes them back."""
    c = self.replace(table=_take(self.table, parents), lengths=_take(self.lengths, parents), held=self.recount())
    return c.replace(refcount=c.recount())._copy_shared_partials(live)

  def adopt(self, slots: jax.Array, work: "PagedKVCache", live: jax.Array) -> "PagedKVCache":
    """This cache with particles `slots` int32[B, N'] replaced by `work`'s N' particles
    (a `branch` of it, grown) for prompts with live bool[B]; the pages are `work`'s."""
    rows = jnp.arange(slots.shape[0])[:, None]
    put = lambda x, y: x.at[rows, slots].set(  # noqa: E731
        jnp.where(live.reshape((-1,) + (1,) * (y.ndim - 1)), y, x[rows, slots]))
    c = self.replace(k=work.k, v=work.v, table=put(self.table, work.table), lengths=put(self.lengths, work.lengths),
                     oom=self.oom | work.oom)
    return c.replace(refcount=c.recount())

  def _copy_shared_partials(self, live: jax.Array) -> "PagedKVCache":
    """Copy-on-write: every particle whose partial last page an earlier particle also has
    (of prompts with live bool[B]) gets a fresh copy of it."""
    ps, (b, n, m) = self.page_size, self.table.shape
    last_idx = jnp.clip(self.used_pages() - 1, 0, m - 1)
    last = jnp.take_along_axis(self.table, last_idx[..., None], axis=-1)[..., 0]
    partial = (self.lengths % ps != 0) & (last >= 0) & live[:, None]
    same = (last[:, :, None] == last[:, None, :]) & partial[:, :, None] & partial[:, None, :]
    dup = partial & jnp.any(same & (jnp.arange(n)[None, :] < jnp.arange(n)[:, None])[None], axis=-1)
    pages, refcount, oom = self._alloc(dup)
    ok = pages >= 0
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, n))
    dst = jnp.where(ok, pages, self.num_pages)
    src = jnp.maximum(last, 0)
    ks = tuple(x.at[rows, dst].set(x[rows, src], mode="drop") for x in self.k)
    vs = tuple(x.at[rows, dst].set(x[rows, src], mode="drop") for x in self.v)
    onehot = jax.nn.one_hot(last_idx, m, dtype=bool) & ok[..., None]
    table = jnp.where(onehot, pages[..., None], self.table)
    c = self.replace(k=ks, v=vs, table=table, oom=self.oom | oom)
    return c.replace(refcount=c.recount())

def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x[b, idx[b, n], ...] for x [B, N, ...] and idx int32[B, N']."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def init_paged_cache(prefix, config, num_particles: int, max_len: int, page_size: int = 16,
                     num_pages: int = 0) -> PagedKVCache:
  """An empty paged cache: `num_pages` pages per prompt (0: enough for every particle to
  reach max_len without sharing), ceil(max_len / page_size) table entries per particle."""
  if page_size < 1:
    raise ValueError(f"page_size must be >= 1, got {page_size}")
  m = -(-max_len // page_size)
  num_pages = num_pages or num_particles * m
  b = prefix.lengths.shape[0]
  shape = (b, num_pages, page_size, config.num_kv_heads, config.head_dim)
  zeros = tuple(jnp.zeros(shape, config.jnp_dtype) for _ in range(config.num_layers))
  return PagedKVCache(prefix=prefix, k=zeros, v=tuple(jnp.zeros_like(x) for x in zeros), table=jnp.full((b, num_particles, m), -1, jnp.int32),
                      refcount=jnp.zeros((b, num_pages), jnp.int32),
                      lengths=jnp.zeros((b, num_particles), jnp.int32), oom=jnp.zeros((b,), bool),
                      page_size=page_size)


def check_pages(cache) -> None:
  """Raises RuntimeError if a paged cache ran out of pages (a no-op for other caches)."""
  if not isinstance(cache, PagedKVCache) or isinstance(cache.oom, jax.core.Tracer):
    return  # under a trace the flag is checked by the caller that materialises it
  if bool(jax.device_get(jnp.any(cache.oom))):
    raise RuntimeError(f"the paged KV cache ran out of pages ({cache.num_pages} pages of {cache.page_size} slots "
                       f"per prompt); the writes that found no page were dropped. Increase num_pages.")
