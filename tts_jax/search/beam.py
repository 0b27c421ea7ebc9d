"""Step-level beam search and DVTS as one selection strategy, `Beam`.

After every step each group of `group_size` particles keeps its `width` best distinct
particles by potential and refills the group with copies of them:

  beam search  one group of N, width N / M: M expansions per beam (Snell et al. 2024);
  DVTS         N / M independent groups of M, width 1 (diverse verifier tree search,
               Beeching et al. 2024).

Finished survivors keep one slot each (they are complete answers and are never
extended again); the remaining slots go round-robin to the unfinished survivors (to
all survivors if none is unfinished).

`width` and `group_size` are traced (`SelectionStrategy.traced`): beam search and DVTS
at one N, and every width, run one compiled engine program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from tts_jax.smc import SMCConfig
from tts_jax.smc.particles import Particles
from tts_jax.smc.strategy import Selection, SelectionStrategy, copy_selected


def duplicates(hash_, length, among=None) -> jax.Array:
  """bool[G]: particles identical (same tokens: hash and length) to one of lower index
  (among bool[G, G]: only where among[i, j], e.g. the same group; None: all)."""
  idx = jnp.arange(length.shape[0])
  same = (length[:, None] == length[None, :]) & jnp.all(hash_[:, None] == hash_[None, :], axis=-1)
  if among is not None:
    same = same & among
  return jnp.any(same & (idx[None, :] < idx[:, None]), axis=1)


def fill_slots(top, valid, done) -> jax.Array:
  """Ancestors int32[G] of a group from its survivors: `top` int[W] particle indices in rank
  order, the first sum(valid) of them real (valid bool[W] a prefix mask), done bool[G].
  Finished survivors keep one slot each; the other slots go round-robin to the unfinished
  survivors (to all survivors if none is unfinished). (`_fill_groups` with one group.)"""
  g, width = done.shape[0], top.shape[0]
  order = jnp.concatenate([top, jnp.zeros((g - width,), top.dtype)]).astype(jnp.int32)
  return _fill_groups(order, jnp.concatenate([valid, jnp.zeros((g - width,), bool)]), done, g)


def _fill_groups(order, valid, done, group) -> jax.Array:
  """`fill_slots` for every group of `group` consecutive slots at once (group may be traced):
  order int32[N] each group's particles in rank order within its own segment, valid bool[N]
  a prefix of each segment (its survivors), done bool[N] per particle -> ancestors int32[N]."""
  idx = jnp.arange(order.shape[0])
  gid, pos = idx // group, idx % group  # a slot's group and its position in it
  same_group = gid[:, None] == gid[None, :]
  fin, unf = valid & done[order], valid & ~done[order]
  fin_first = order[jnp.lexsort((idx, ~fin, gid))]  # each group's finished survivors first, in rank order
  unf_first = order[jnp.lexsort((idx, ~unf, gid))]
  count = lambda m: jnp.sum(same_group & m[None, :], axis=1)  # noqa: E731  per slot: its group's count
  nf, nu, nv = count(fin), count(unf), count(valid)
  start = idx - pos  # the slot's group's first index
  return jnp.where(pos < nf, fin_first[idx],
                   jnp.where(nu > 0, unf_first[start + (pos - nf) % jnp.maximum(nu, 1)],
                             order[start + pos % jnp.maximum(nv, 1)]))


def beam_ancestors(score, done, hash_, length, width, group, dedup: bool) -> jax.Array:
  """Ancestors int32[N] of one prompt's N particles (score, done, length [N], hash_ [N, H]),
  split into groups of `group` consecutive particles, each keeping its `width` best distinct
  particles (see the module docstring). width and group may be traced (int32 scalars;
  group divides N, 1 <= width <= group): one sort of all N by (group, duplicate, -score,
  index) puts each group's survivors first in its own segment of the order."""
  n = score.shape[0]
  idx = jnp.arange(n)
  gid, pos = idx // group, idx % group  # a particle's group; a slot's position in its group
  same_group = gid[:, None] == gid[None, :]
  dup = duplicates(hash_, length, among=same_group) if dedup else jnp.zeros((n,), bool)
  order = jnp.lexsort((idx, -score, dup, gid))  # by group; distinct first, then score (desc), then index
  return _fill_groups(order, (pos < width) & ~dup[order], done, group)  # survivors: distinct, the best `width`


@dataclasses.dataclass(frozen=True)
class Beam(SelectionStrategy):
  """Keep the top `width` distinct particles of each group of `group_size` (0: all N) by
  potential. dedup: identical particles (same tokens) count once."""

  width: int = 1
  group_size: int = 0
  dedup: bool = True

  traced: ClassVar[tuple[str, ...]] = ("width", "group_size")

  def group(self, num_particles: int) -> int:
    """Particles per group."""
    return self.group_size or num_particles

  def validate(self, num_particles: int) -> None:
    g = self.group(num_particles)
    if self.group_size < 0 or num_particles % g:
      raise ValueError(f"group_size={self.group_size} must divide num_particles={num_particles}")
    if not 1 <= self.width <= g:
      raise ValueError(f"beam width must be in [1, group size {g}], got {self.width}")

  def select(self, keys: jax.Array, p: Particles) -> Selection:
    n = p.shape[1]
    group = jnp.where(self.group_size == 0, n, self.group_size)  # traced in the engine
    one = functools.partial(beam_ancestors, width=self.width, group=group, dedup=self.dedup)
    return copy_selected(p, jax.vmap(one)(p.log_potential, p.done, p.hash, p.length))


def per_group(fn, g: int, *arrays) -> jax.Array:
  """Ancestors int32[B, N] from `fn`, which maps one group's slices of `arrays` ([B, N, ...]
  each, split into groups of g consecutive particles) to that group's ancestors int32[g]."""
  b, n = arrays[0].shape[:2]
  split = lambda x: x.reshape((b * (n // g), g) + x.shape[2:])  # noqa: E731
  anc = jax.vmap(fn)(*map(split, arrays))
  return (anc.reshape(b, n // g, g) + (jnp.arange(n // g) * g)[None, :, None]).reshape(b, n)


def _check(n: int, m: int):
  if m < 1 or n % m:
    raise ValueError(f"expansions M={m} must divide the number of particles N={n}")


def beam_search(num_particles: int, expansions: int, dedup: bool = True, **kw) -> SMCConfig:
  """Step-level beam search: beam width N / M, M expansions per beam; other SMCConfig fields
  as keywords."""
  _check(num_particles, expansions)
  return SMCConfig(num_particles=num_particles, select=Beam(width=num_particles // expansions, dedup=dedup), **kw)


def dvts(num_particles: int, expansions: int, dedup: bool = True, **kw) -> SMCConfig:
  """DVTS: N / M independent subtrees, each a width-1 beam search with M expansions; other
  SMCConfig fields as keywords. With M = N (one subtree) this is `beam_search(N, N)`; like
  beam search at any width, it runs the same compiled program (`Beam`'s traced fields)."""
  _check(num_particles, expansions)
  return SMCConfig(num_particles=num_particles, select=Beam(width=1, group_size=expansions, dedup=dedup), **kw)
