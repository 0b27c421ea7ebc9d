"""KV-aware pruning for beam search (ETS, Hooper et al. 2025), as a selection strategy.

Beam search keeps the top `width` particles of a group by potential. ETS keeps the set S that
maximises

    sum_{i in S} r_i  -  lambda_kv * pages(S)  +  lambda_div * clusters(S)

where r_i = exp(log potential) is the verifier's probability, pages(S) the KV-cache pages the
survivors hold together (prefix-shared, as in the paged cache: a page is shared by particles
whose tokens agree up to its end) and clusters(S) the distinct latest steps among them
(identical latest thoughts are one cluster: a lexical stand-in for ETS's semantic
clustering). ETS solves this as an integer program; here it is solved greedily (the best
particle first, then while some marginal gain is >= 0 the largest, ties to the higher
potential, at most `width` survivors), which keeps the selection one fixed-shape jitted loop. Survivors are refilled to the group size as
in `tts_jax.search.beam` (finished ones keep one slot, the others share the rest round-robin),
so with lambda_kv = lambda_div = 0 the rule is beam search exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.search.beam import Beam, duplicates, fill_slots, per_group
from tts_jax.smc import SMCConfig
from tts_jax.smc.particles import Particles
from tts_jax.smc.strategy import Selection, copy_selected

_MULT = np.uint32(0x01000193)  # FNV prime: an odd multiplier, so powers never vanish mod 2^32


def _powers(t: int) -> jax.Array:
  return jnp.cumprod(jnp.concatenate([jnp.ones(1, jnp.uint32), jnp.full(t - 1, _MULT, jnp.uint32)]), dtype=jnp.uint32)


def page_keys(tokens, length, page_size: int) -> tuple[jax.Array, jax.Array]:
  """The KV pages of each sequence: (key uint32[..., J], end int32[..., J]) with J = ceil(T /
  page_size): page j covers tokens [j * page_size, end) with end = min(length, (j + 1) *
  page_size) (-1 for pages past the sequence), key a hash of tokens [0, end). Two sequences
  share page j when their (key, end) agree. tokens: int[..., T]; length: int[...]."""
  t = tokens.shape[-1]
  pos = jnp.arange(t)
  terms = jnp.where(pos < length[..., None], (tokens.astype(jnp.uint32) + 1) * _powers(t), 0)
  prefix = jnp.cumsum(terms, axis=-1, dtype=jnp.uint32)  # prefix[p] hashes tokens [0, p]
  j = jnp.arange(-(-t // page_size))
  end = jnp.minimum(length[..., None], (j + 1) * page_size)
  valid = j * page_size < length[..., None]
  key = jnp.take_along_axis(prefix, jnp.clip(end - 1, 0, t - 1), axis=-1)
  return jnp.where(valid, key, 0), jnp.where(valid, end, -1).astype(jnp.int32)


_page_keys = jax.jit(page_keys, static_argnums=2)  # one program per shape, not one per operation


def distinct_pages(tokens, length, page_size: int) -> np.ndarray:
  """int[B]: KV pages held by the N sequences of each row together (tokens int[B, N, T],
  length int[B, N]), prefix-shared (host numpy)."""
  key, end = jax.device_get(_page_keys(tokens, length, page_size))
  return np.array([len({(k, e, j) for k, e, j in zip(key[b].ravel(), end[b].ravel(),
                                                      np.tile(np.arange(key.shape[-1]), key.shape[1]))
                        if e >= 0}) for b in range(key.shape[0])])


def last_step_keys(tokens, length, step_ids) -> tuple[jax.Array, jax.Array]:
  """(hash uint32[...], token count int32[...]) of each sequence's latest step: the tokens
  after its last delimiter that is not its final token."""
  t = tokens.shape[-1]
  pos = jnp.arange(t)
  delim = jnp.isin(tokens, jnp.asarray(step_ids, tokens.dtype)) if step_ids else jnp.zeros(tokens.shape, bool)
  before = delim & (pos < length[..., None] - 1)
  start = jnp.max(jnp.where(before, pos, -1), axis=-1) + 1
  offset = pos - start[..., None]
  inside = (offset >= 0) & (pos < length[..., None])
  terms = jnp.where(inside, (tokens.astype(jnp.uint32) + 1) * _powers(t)[jnp.clip(offset, 0, t - 1)], 0)
  return jnp.sum(terms, axis=-1, dtype=jnp.uint32), (length - start).astype(jnp.int32)


def _ets_group(score, done, hash_, length, keys, ends, cluster, cluster_len, width: int, lambda_kv: float,
               lambda_div: float):
  """Ancestors int32[G] for one group (see the module docstring). keys / ends [G, J]: page keys;
  cluster / cluster_len [G]: the latest step's key."""
  g = score.shape[0]
  reward = jnp.exp(score)
  eligible = ~duplicates(hash_, length)
  share = (keys[:, None, :] == keys[None, :, :]) & (ends[:, None, :] == ends[None, :, :]) & (ends[:, None, :] >= 0)
  pages = jnp.sum(ends >= 0, axis=-1)
  same_cluster = (cluster[:, None] == cluster[None, :]) & (cluster_len[:, None] == cluster_len[None, :])

  def gain(chosen):
    held = jnp.any(share & chosen[None, :, None], axis=1)  # [G, J] page already held by a survivor
    new_pages = pages - jnp.sum(held, axis=-1)
    new_cluster = ~jnp.any(same_cluster & chosen[None, :], axis=1)
    return reward - lambda_kv * new_pages + lambda_div * new_cluster

  def pick(i, state):
    chosen, top, count = state
    open_ = eligible & ~chosen
    gains = jnp.where(open_, gain(chosen), -jnp.inf)
    tied = open_ & (gains == jnp.max(gains))
    by_score = jnp.where(tied, score, -jnp.inf)  # ties: the higher potential, then the lower index
    best = jnp.where(jnp.any(by_score > -jnp.inf), jnp.argmax(by_score), jnp.argmax(tied))
    take = open_[best] & (gains[best] >= 0)
    chosen = chosen.at[best].set(chosen[best] | take)
    top = top.at[i].set(jnp.where(take, best, top[i]))
    return chosen, top, count + take

  first = jnp.argmax(jnp.where(eligible, score, -jnp.inf))  # the best particle always survives
  init = (jnp.zeros((g,), bool).at[first].set(True), jnp.full((width,), first), jnp.int32(1))
  _, top, count = jax.lax.fori_loop(1, width, pick, init)
  return fill_slots(top, jnp.arange(width) < count, done)


@dataclasses.dataclass(frozen=True)
class KVAwareBeam(Beam):
  """ETS's survivor choice in each group of `group_size` (0: all N) particles: at most `width`
  survivors, lambda_kv the reward a new KV page must pay for, lambda_div the bonus of a new
  latest-step cluster, page_size the cache's page size, step_ids the step delimiters
  (identical particles always count once)."""

  lambda_kv: float = 0.0
  lambda_div: float = 0.0
  page_size: int = 16
  step_ids: tuple[int, ...] = ()

  traced: ClassVar[tuple[str, ...]] = ()  # its greedy loop runs `width` times: static

  def validate(self, num_particles: int) -> None:
    super().validate(num_particles)
    if self.lambda_kv < 0 or self.lambda_div < 0:
      raise ValueError(f"lambda_kv and lambda_div must be >= 0, got {self.lambda_kv}, {self.lambda_div}")
    if self.page_size < 1:
      raise ValueError(f"page_size must be >= 1, got {self.page_size}")

  def select(self, keys: jax.Array, p: Particles) -> Selection:
    pkeys, pends = page_keys(p.tokens, p.length, self.page_size)
    cluster, cluster_len = last_step_keys(p.tokens, p.length, self.step_ids)
    one = functools.partial(_ets_group, width=self.width, lambda_kv=self.lambda_kv, lambda_div=self.lambda_div)
    return copy_selected(p, per_group(one, self.group(p.shape[1]), p.log_potential, p.done, p.hash, p.length, pkeys,
                                      pends, cluster, cluster_len))


def ets_beam_search(num_particles: int, expansions: int, lambda_kv: float, lambda_div: float = 0.0,
                    page_size: int = 16, **kw) -> SMCConfig:
  """Beam search (width N / M) with ETS's KV-aware survivor choice; other SMCConfig fields as
  keywords (`delimiters` also name the steps the diversity term compares)."""
  if expansions < 1 or num_particles % expansions:
    raise ValueError(f"expansions M={expansions} must divide the number of particles N={num_particles}")
  select = KVAwareBeam(width=num_particles // expansions, lambda_kv=lambda_kv, lambda_div=lambda_div,
                       page_size=page_size, step_ids=tuple(kw.get("delimiters", ())))
  return SMCConfig(num_particles=num_particles, select=select, **kw)
