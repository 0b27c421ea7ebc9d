"""k-subsets of a pool of n samples as rank arrays, one shape for every budget.

A subset in sampling order is given by `rank` int32[..., S, n]: sample j is the rank[j]-th
sample drawn, and at budget k the subset is {j : rank[j] < k}. A random permutation per
subset gives random k-subsets (in random order) for every k at once; the enumerated
subsets of one k (all C(n, k), padded to S rows of zero weight) give exact expectations.
So every budget of a run has the same shapes and the selection code compiles once.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np


_MANTISSA_BITS = 23  # jax.random.uniform's float32 draws: multiples of 2^-23 in [0, 1)


@functools.partial(jax.jit, static_argnums=(1, 2))
def random_ranks(keys, n: int, num_subsets: int) -> jax.Array:
  """int32[..., S, n]: S random orders of range(n) per key (key [...] -> its own subsets;
  the first k of each order are the random k-subset used at budget k).

  The orders are the stable argsort of uniforms (`stable_order`); the ranks are their inverse
  permutations, written by a scatter rather than a second sort.
  """
  flat = jnp.reshape(keys, (-1,))
  order = stable_order(jax.vmap(lambda key: jax.random.uniform(key, (num_subsets, n)))(flat))
  return inverse_permutation(order).reshape(keys.shape + (num_subsets, n))


def stable_order(u: jax.Array) -> jax.Array:
  """int32[..., n]: `jnp.argsort(u, axis=-1, stable=True)` for u float32[..., n] drawn by
  `jax.random.uniform` in [0, 1) (multiples of 2^-23).

  For n <= 512 it sorts one integer per draw, u 2^23 n + j (exact, unique, ordered as (u, j)),
  and reads j back: ~5x faster than argsort on CPU (XLA's sort of (value, index) pairs runs a
  comparator per comparison), the same order, ties included. Larger n take argsort."""
  n = u.shape[-1]
  if n > 2 ** (32 - _MANTISSA_BITS):
    return jnp.argsort(u, axis=-1, stable=True).astype(jnp.int32)
  scaled = (u * 2.0 ** _MANTISSA_BITS).astype(jnp.uint32)
  packed = scaled * jnp.uint32(n) + jnp.arange(n, dtype=jnp.uint32)
  return (jnp.sort(packed, axis=-1) % jnp.uint32(n)).astype(jnp.int32)


def inverse_permutation(perm: jax.Array) -> jax.Array:
  """int32[..., n]: q with q[perm[j]] = j for each row of permutations perm int[..., n]
  (a scatter: no sort). The drawing order of a rank array is `inverse_permutation(rank)`."""
  n = perm.shape[-1]
  rows = perm.reshape(-1, n)
  out = jnp.zeros(rows.shape, jnp.int32).at[jnp.arange(rows.shape[0])[:, None], rows].set(
      jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), rows.shape), unique_indices=True)
  return out.reshape(perm.shape)


def enumerable(n: int, k: int, num_subsets: int) -> bool:
  """All C(n, k) subsets fit in num_subsets rows."""
  return math.comb(n, k) <= num_subsets


@functools.lru_cache(maxsize=64)
def enumerated_ranks(n: int, k: int, num_subsets: int) -> tuple[np.ndarray, np.ndarray]:
  """(int32[S, n] ranks of all C(n, k) subsets (members in index order, padded with copies of
  the first), float32[S] weights: 1 for the real rows, 0 for the padding)."""
  combos = list(itertools.combinations(range(n), k))
  if len(combos) > num_subsets:
    raise ValueError(f"C({n}, {k}) = {len(combos)} subsets do not fit in {num_subsets}")
  ranks = np.zeros((num_subsets, n), np.int32)
  for s, c in enumerate(combos):
    rest = [j for j in range(n) if j not in c]
    ranks[s, list(c) + rest] = np.arange(n)
  ranks[len(combos):] = ranks[0]
  weights = (np.arange(num_subsets) < len(combos)).astype(np.float32)
  return ranks, weights
