"""Thought-level redundancy between parallel chains (Slim-SC, Hong et al. 2025).

A chain's thoughts are its reasoning steps (the tokens between step delimiters). Two chains'
t-th thoughts are compared by the Jaccard similarity of their token n-gram sets (a lexical
stand-in for the paper's sentence embeddings; threshold 1 means identical n-gram sets).

`prune_redundant` replays Slim-SC's random pruning step by step: at step t, in drawing order,
a chain still running whose t-th thought is at least `threshold` similar to that of an earlier
chain still running is stopped right after that thought. Chains run independently, so stopping
one is the same as cutting its drawn tokens there: the rule is evaluated exactly on pre-drawn
pools, with the tokens saved.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def thoughts(tokens, length: int, step_ids) -> tuple[list[tuple[int, ...]], list[int]]:
  """The thoughts of one chain (tokens int[L], `length` real) and the token count at the end
  of each (its delimiter included): ([tuple of token ids per thought], [end per thought])."""
  out, ends, start = [], [], 0
  for i in range(int(length)):
    if int(tokens[i]) in step_ids:
      out.append(tuple(int(x) for x in tokens[start:i]))
      ends.append(i + 1)
      start = i + 1
  return out, ends


def _grams(thought: tuple[int, ...], n: int) -> set:
  if len(thought) <= n:
    return {thought}
  return {thought[i:i + n] for i in range(len(thought) - n + 1)}


def thought_similarity(tokens, lengths, step_ids, max_steps: int, ngram: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Pairwise similarity of the chains' t-th thoughts, for the first `max_steps` steps.

  tokens: int[P, n, L] chains, lengths: int[P, n]; step_ids: the delimiter token ids ->
  (sim float32[P, T, n, n] Jaccard similarity of the chains' t-th thoughts' n-gram sets (0
  where either chain has no t-th thought), ends int32[P, n, T] tokens generated at the end of
  the t-th thought, -1 where there is none).
  """
  tokens, lengths = np.asarray(tokens), np.asarray(lengths)
  p, n, _ = tokens.shape
  step_ids = {int(s) for s in step_ids}
  sim = np.zeros((p, max_steps, n, n), np.float32)
  ends = np.full((p, n, max_steps), -1, np.int32)
  for i in range(p):
    grams: list[list[set]] = [[] for _ in range(max_steps)]
    owners: list[list[int]] = [[] for _ in range(max_steps)]
    for j in range(n):
      th, e = thoughts(tokens[i, j], lengths[i, j], step_ids)
      for t, (x, end) in enumerate(zip(th[:max_steps], e[:max_steps])):
        grams[t].append(_grams(x, ngram))
        owners[t].append(j)
        ends[i, j, t] = end
    for t in range(max_steps):
      if not owners[t]:
        continue
      vocab: dict = {}
      rows = [[vocab.setdefault(g, len(vocab)) for g in s] for s in grams[t]]
      hot = np.zeros((len(rows), len(vocab)), np.float32)
      for r, cols in enumerate(rows):
        hot[r, cols] = 1.0
      inter = hot @ hot.T
      sizes = hot.sum(1)
      union = sizes[:, None] + sizes[None, :] - inter
      idx = np.asarray(owners[t])
      sim[i, t][np.ix_(idx, idx)] = inter / np.maximum(union, 1.0)
  return sim, ends


def prune_redundant(sim, ends, rank, member, threshold: float) -> jax.Array:
  """int32[..., n]: the thought after which Slim-SC stops each chain, -1 for chains it lets
  finish (see the module docstring).

  sim: float[..., T, n, n] and ends int[..., n, T] from `thought_similarity` (leading dims
  broadcast against those of rank / member: e.g. [P, 1] pool arrays with [P, S] subsets);
  rank: int[..., n] drawing order (sample j is the rank[j]-th drawn); member: bool[..., n]
  the chains started. A chain is never stopped by a chain drawn after it, so the first
  chain drawn always finishes.
  """
  n, steps = rank.shape[-1], sim.shape[-3]
  lead = jnp.broadcast_shapes(rank.shape[:-1], member.shape[:-1], sim.shape[:-3], ends.shape[:-2])
  sim = jnp.broadcast_to(sim, lead + sim.shape[-3:])
  ends = jnp.broadcast_to(ends, lead + ends.shape[-2:])
  rank, member = jnp.broadcast_to(rank, lead + (n,)), jnp.broadcast_to(member, lead + (n,))
  order = jnp.argsort(rank, axis=-1)

  def step(t, stopped_at):
    s_t = jax.lax.dynamic_index_in_dim(sim, t, axis=-3, keepdims=False)  # [..., n, n]
    reach = (jax.lax.dynamic_index_in_dim(ends, t, axis=-1, keepdims=False) >= 0) & member & (stopped_at < 0)

    def visit(q, running):
      j = jax.lax.dynamic_index_in_dim(order, q, axis=-1, keepdims=True)  # [..., 1]: the q-th drawn
      row = jnp.take_along_axis(s_t, j[..., None], axis=-2)[..., 0, :]  # its similarity to each chain
      earlier = running & (rank < jnp.take_along_axis(rank, j, axis=-1)) & (row >= threshold)
      prune = jnp.take_along_axis(running, j, axis=-1)[..., 0] & jnp.any(earlier, axis=-1)
      return running & ~(jax.nn.one_hot(j[..., 0], n, dtype=bool) & prune[..., None])

    survivors = jax.lax.fori_loop(0, n, visit, reach)
    return jnp.where(reach & ~survivors, t, stopped_at)

  return jax.lax.fori_loop(0, steps, step, jnp.full(lead + (n,), -1, jnp.int32))


def pruned_lengths(ends, lengths, stopped_at) -> jax.Array:
  """int32[..., n] tokens each chain generates: its length, or the end of the thought it was
  stopped after (`stopped_at` int[..., n], -1: not stopped)."""
  cut = jnp.take_along_axis(ends, jnp.maximum(stopped_at, 0)[..., None], axis=-1)[..., 0]
  return jnp.where(stopped_at >= 0, cut, lengths).astype(jnp.int32)
