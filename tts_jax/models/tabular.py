"""A tabular language model: explicit next-token logits for every prefix.

With a vocabulary of ~4 and sequences of ~6 tokens every sequence can be
enumerated, so sampling, SMC, search and MCMC can be checked against exact
probabilities. It implements the same contract as `LanguageModel`
(`prefill` / `init_cache` / `decode`), so every algorithm runs on it unchanged.

Prefixes are numbered id([]) = 0, id(p + [t]) = id(p) * V + t + 1, and
params["logits"]: float32[num_prefixes, V] holds the logits after each prefix
of length <= max_length. Past max_length the prefix id saturates at a row of
zeros (uniform logits).
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class TabularCache:
  """ids: int32[B, N] prefix id of every sample; lengths: int32[B, N] tokens so far."""

  ids: jax.Array
  lengths: jax.Array

  def gather(self, ancestors: jax.Array) -> "TabularCache":
    """The cache of particles `ancestors` int32[B, N'] (indices within each prompt)."""
    return TabularCache(ids=jnp.take_along_axis(self.ids, ancestors, axis=1),
                        lengths=jnp.take_along_axis(self.lengths, ancestors, axis=1))

  def branch(self, parents: jax.Array, live: jax.Array) -> "TabularCache":
    """Copies of particles `parents` int32[B, N'] (a tree's children; `PagedKVCache.branch`)."""
    del live
    return self.gather(parents)

  def adopt(self, slots: jax.Array, work: "TabularCache", live: jax.Array) -> "TabularCache":
    """Particles `slots` int32[B, N'] replaced by `work`'s for prompts with live bool[B]."""
    rows = jnp.arange(slots.shape[0])[:, None]
    put = lambda x, y: x.at[rows, slots].set(jnp.where(live[:, None], y, x[rows, slots]))  # noqa: E731
    return TabularCache(ids=put(self.ids, work.ids), lengths=put(self.lengths, work.lengths))


@struct.dataclass
class TabularPrefix:
  ids: jax.Array  # int32[B]
  lengths: jax.Array  # int32[B]


@dataclasses.dataclass(frozen=True)
class TabularLM:
  """vocab_size V, max_length L: logits are tabled for prefixes of length <= L."""

  vocab_size: int
  max_length: int

  @property
  def num_prefixes(self) -> int:
    return sum(self.vocab_size ** t for t in range(self.max_length + 1)) + 1  # + the saturated row

  def _step(self, ids, lengths, tokens):
    nxt = ids * self.vocab_size + tokens + 1
    return jnp.where(lengths < self.max_length, nxt, self.num_prefixes - 1).astype(jnp.int32)

  def prefix_id(self, tokens) -> int:
    i = 0
    for t in tokens:
      i = i * self.vocab_size + int(t) + 1
    return i

  def prefill(self, params, tokens: jax.Array, lengths: jax.Array):
    """tokens int32[B, Tp] right-padded, lengths int32[B] -> (logits float32[B, V], TabularPrefix)."""
    b, t = tokens.shape
    ids = jnp.zeros((b,), jnp.int32)
    for j in range(t):
      ids = jnp.where(j < lengths, self._step(ids, jnp.full((b,), j), tokens[:, j]), ids)
    # (`jnp.take`, not `table[ids]`: indexing a mesh-placed table inside `per_device` is refused)
    return jnp.take(params["logits"], ids, axis=0), TabularPrefix(ids=ids, lengths=lengths.astype(jnp.int32))

  def init_cache(self, prefix: TabularPrefix, num_samples: int, max_len: int, compact: bool = True) -> TabularCache:
    b = prefix.ids.shape[0]
    return TabularCache(ids=jnp.broadcast_to(prefix.ids[:, None], (b, num_samples)),
                        lengths=jnp.broadcast_to(prefix.lengths[:, None], (b, num_samples)))

  def decode(self, params, tokens: jax.Array, cache: TabularCache, active: jax.Array | None = None):
    """tokens int32[B, N] -> (logits float32[B, N, V] after them, cache)."""
    if active is None:
      active = jnp.ones(tokens.shape, bool)
    ids = jnp.where(active, self._step(cache.ids, cache.lengths, tokens), cache.ids)
    logits = jnp.take(params["logits"], ids, axis=0)
    return logits, TabularCache(ids=ids, lengths=cache.lengths + active.astype(jnp.int32))

  def forward(self, params, tokens: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    """Logits after every prefix tokens[:, :t+1]: float32[B, T, V]."""
    b, t = tokens.shape
    ids = jnp.zeros((b,), jnp.int32)
    out = []
    for j in range(t):
      ids = self._step(ids, jnp.full((b,), j), tokens[:, j])
      out.append(jnp.take(params["logits"], ids, axis=0))
    return jnp.stack(out, axis=1)


def random_tabular(vocab_size: int = 4, max_length: int = 6, seed: int = 0, scale: float = 1.5):
  """A TabularLM with normal(0, scale) logits; the saturated row is zeros."""
  lm = TabularLM(vocab_size, max_length)
  logits = scale * jax.random.normal(jax.random.key(seed), (lm.num_prefixes, vocab_size))
  return lm, {"logits": logits.at[-1].set(0.0)}


def enumerate_sequences(lm: TabularLM, params, prompt, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Every continuation of `prompt` with exactly `length` tokens and its exact log-prob.

  Returns (int32[V^length, length] sequences, float64[V^length] log-probs, summing to 1 in prob).
  """
  table = np.asarray(params["logits"], np.float64)
  logp = table - np.logaddexp.reduce(table, axis=1, keepdims=True)
  seqs = np.array(list(itertools.product(range(lm.vocab_size), repeat=length)), np.int32).reshape(-1, length)
  out = np.zeros(len(seqs))
  base = lm.prefix_id(prompt)
  for r, s in enumerate(seqs):
    i, n, total = base, len(prompt), 0.0
    for t in s:
      total += logp[i, t]
      i = i * lm.vocab_size + int(t) + 1 if n < lm.max_length else lm.num_prefixes - 1
      n += 1
    out[r] = total
  return seqs, out


def enumerate_generations(lm: TabularLM, params, prompt, max_new_tokens: int, stop_tokens=(),
                          temperature: float = 1.0) -> tuple[list[tuple[int, ...]], np.ndarray]:
  """Every complete generation after `prompt` and its exact log-probability.

  A generation is complete when it ends in a stop token or reaches `max_new_tokens`.
  With `temperature`, log-probs are those of the tempered model (a proposal).
  Returns (generations as tuples, float64[G] log-probs that sum to 1 in probability).
  """
  table = np.asarray(params["logits"], np.float64) / temperature
  logp = table - np.logaddexp.reduce(table, axis=1, keepdims=True)
  stops = set(int(s) for s in stop_tokens)
  seqs, lps = [], []

  def walk(seq, pid, n, lp):
    if seq and (seq[-1] in stops or len(seq) == max_new_tokens):
      seqs.append(tuple(seq))
      lps.append(lp)
      return
    for t in range(lm.vocab_size):
      nxt = pid * lm.vocab_size + t + 1 if n < lm.max_length else lm.num_prefixes - 1
      walk(seq + [t], nxt, n + 1, lp + logp[pid, t])

  walk([], lm.prefix_id(prompt), len(prompt), 0.0)
  return seqs, np.array(lps)
