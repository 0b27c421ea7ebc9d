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


@functools.partial(jax.jit, static_argnums=(1, 2))
def random_ranks(keys, n: int, num_subsets: int) -> jax.Array:
  """int32[..., S, n]: S random orders of range(n) per key (key [...] -> its own subsets;
  the first k of each order are the random k-subset used at budget k).

  The orders are argsort(uniforms) (stable); the ranks are their inverse permutations,
  written by a scatter rather than a second sort.
  """
  flat = jnp.reshape(keys, (-1,))
  order = jax.vmap(lambda key: jnp.argsort(jax.random.uniform(key, (num_subsets, n)), axis=-1))(flat)
  return inverse_permutation(order).reshape(keys.shape + (num_subsets, n))


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
