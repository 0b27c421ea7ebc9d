"""Monte Carlo tree search over reasoning steps (PUCT), batched over problems in one jitted loop.

    tree = mcts(lm, params, prompts, lengths, key, potential=step_oracle(task), simulations=16,
                expansions=4, max_new_tokens=96, delimiters=ids.steps, stop_tokens=ids.stop)
    tree.answer_tokens[b, :tree.answer_length[b]]          # the solution chosen for problem b
    best = tree.answer()                                   # int32[B]: the node it continues

A node is a partial solution ending at a step boundary (the root: the empty solution). One
simulation per problem:

1. *select*: from the root, while the node is expanded and not finished, go to the child with
   the largest Q + c_puct * P * sqrt(N_parent) / (1 + N_child) (P = 1/K: the children are
   samples of the policy, so its preference is already in which steps were drawn);
2. *expand*: draw K next steps from the policy, continuing the node's KV: the prompt is
   prefilled once per problem, and every node keeps its KV in a paged cache
   (`tts_jax.models.paged`, one block table per node) whose full pages its children
   reference, so an expansion decodes only the new step's tokens (plus the node's last
   token, which a node keeps pending until it is expanded);
3. *evaluate* each child with the potential (value = exp(log phi): a PRM's probability with
   `OutcomePotential`, or the exact checker's 1 - eps / eps);
4. *back up* one visit with the mean (or max) of the children's values along the path to the
   root (each child starts with its own value and one visit).

A finished node (a stop token, or T tokens) is a leaf: selecting it backs up its value again.
The chosen node follows the most-visited children from the root; if that path ends
unfinished, the finished node with the best value, if any. The answer is the chosen node,
completed by one rollout from the policy (continuing its KV) when it is unfinished (a search
of a few simulations rarely reaches the end of a long solution; the rollout's tokens are
counted). A step's tokens are drawn as `sample_jit` draws them (token i of the expansion in
simulation s with fold_in(fold_in(key, s), i)), so the tree equals one built by re-prefilling
each node and sampling its children with the sampler (`tests/test_mcts.py` checks it, and
that every node's KV equals a full forward pass).

The search core is written here rather than with `mctx`: mctx expands one node per
simulation through a recurrent function of (embedding, action), so the K candidate steps of a
node would have to be drawn in advance and carried in every node's embedding (K sequences per
node), and its tree arrays hold one embedding per node; here a node is its token row and
its block table, and the K candidates of an expansion grow together from the node's pages.
`share_kv=False` re-prefills each expanded node instead (the baseline of
`benchmarks/mcts.py`). `tests/test_mcts.py` checks the search against a tabular LM with exact
values (visits concentrate on the optimum).

The search is one program; with a potential that names host work (a step-tag PRM's reader,
`tts_jax.verifiers.base.needs_host`) its parts (`_Search`) run as programs with the host's
scoring of each simulation's children between them, the same tree bit for bit, so JAX's
persistent cache keeps them (a program holding a callback is never kept).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tts_jax.models.paged import check_pages
from tts_jax.sampling import draw_tokens, sample_jit, splice, suffix_prompts
from tts_jax.sampling.inputs import check_prompt_batch, check_token_ids, prompt_keys
from tts_jax.sampling.logits import SamplingParams
from tts_jax.verifiers import as_potential
from tts_jax.verifiers.base import needs_host, with_host


@struct.dataclass
class Tree:
  """The search trees of B problems, M = 1 + simulations x K node slots each.

  tokens: int32[B, M, T] each node's solution so far; length: int32[B, M].
  parent: int32[B, M] (-1 for the root and unused slots); first_child: int32[B, M] (-1 while
    not expanded; the K children are the slots first_child .. first_child + K - 1).
  visits, value_sum: float32[B, M] backed-up statistics; value: float32[B, M] the node's own
    evaluation; finished: bool[B, M]; used: int32[B] slots in use; decoded: int32[B] policy
    tokens drawn (the final rollout's included); born: int32[B, M] the simulation that
    created each node (-1: the root, unused slots).
  answer_tokens: int32[B, T], answer_length: int32[B]: the chosen node, completed by a rollout
    when unfinished.
  cache: the nodes' KV (particle i: node i before its last token; a `PagedKVCache` for a
    `LanguageModel` policy); pages: int32[B] the most KV pages in use at once (0 for a
    cache without pages).
  """

  tokens: jax.Array
  length: jax.Array
  parent: jax.Array
  first_child: jax.Array
  visits: jax.Array
  value_sum: jax.Array
  value: jax.Array
  finished: jax.Array
  used: jax.Array
  decoded: jax.Array
  born: jax.Array
  answer_tokens: jax.Array | None = None
  answer_length: jax.Array | None = None
  cache: object = None
  pages: jax.Array | None = None
  expansions: int = struct.field(pytree_node=False, default=1)

  def answer(self) -> jax.Array:
    """int32[B]: the chosen node (see the module docstring)."""
    return jax.vmap(lambda *a: _answer(self.expansions, *a))(self.first_child, self.visits, self.value_sum,
                                                             self.value, self.finished, self.parent)


def mcts(lm, params, prompt_tokens, prompt_lengths, key, *, potential, potential_params=None, simulations: int,
         expansions: int, max_new_tokens: int, delimiters: Sequence[int], stop_tokens: Sequence[int] = (),
         pad_id: int = 0, c_puct: float = 1.0, backup: str = "mean",
         proposal: SamplingParams = SamplingParams(), page_size: int = 16, num_pages: int = 0,
         share_kv: bool = True) -> Tree:
  """Runs `simulations` PUCT simulations for each of B prompts.

  Args:
    lm, params: the policy (`CausalLM` contract).
    prompt_tokens: int32[B, Tp] right-padded; prompt_lengths: int32[B].
    key: one PRNG key, or one per prompt ([B]).
    potential, potential_params: a potential that scores whole sequences (a function of the
      tokens, `OraclePotential`, `OutcomePotential`); value = exp(log phi), so use log-
      probabilities (transform "log").
    simulations: S >= 1; expansions: K >= 1 steps drawn per expansion.
    max_new_tokens: T; delimiters: token ids that end a step; stop_tokens: end a solution.
    c_puct: the exploration constant; proposal: how steps are drawn (default: the model).
    backup: the value an expansion backs up (one visit) to the node and its ancestors: the
      "mean" of its children's values (an estimate of the policy's value, as a PRM gives) or
      their "max" (an optimal value).
    page_size, num_pages: the nodes' paged KV cache, num_pages pages of page_size tokens per
      problem (0: enough with no sharing at all, (1 + S x K + 1) x ceil(T / page_size));
      `Tree.pages` reports how many a search used. A search that runs out raises
      RuntimeError.
    share_kv: False re-prefills prompt + node at every expansion instead (the same tree up
      to float rounding; the baseline of `benchmarks/mcts.py`, and what a policy whose cache
      cannot `branch` gets).

  Returns:
    The `Tree`s.
  """
  for name, v in (("simulations", simulations), ("expansions", expansions)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be an int >= 1, got {v!r}")
  if not c_puct >= 0:
    raise ValueError(f"c_puct must be >= 0, got {c_puct!r}")
  if not delimiters:
    raise ValueError("mcts needs step delimiters (token ids that end a step)")
  if backup not in ("mean", "max"):
    raise ValueError(f"backup must be 'mean' or 'max', got {backup!r}")
  for name, v, low in (("page_size", page_size, 1), ("num_pages", num_pages, 0)):
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
      raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
  tokens, lengths = check_prompt_batch(lm, prompt_tokens, prompt_lengths, max_new_tokens)
  check_token_ids(lm, delimiters=delimiters, stop_tokens=stop_tokens, pad_id=(pad_id,))
  keys = prompt_keys(key, tokens.shape[0])
  search = _Search(lm, simulations=simulations, k=expansions, t=max_new_tokens,
                   delimiters=tuple(int(d) for d in delimiters), stop_tokens=tuple(int(s) for s in stop_tokens),
                   pad_id=int(pad_id), c_puct=float(c_puct), proposal=proposal, backup=backup,
                   page_size=page_size, num_pages=num_pages, share_kv=bool(share_kv))
  potential = as_potential(potential)
  run = _mcts_from_host if needs_host(potential) else _mcts_jit  # host work between programs, not called back
  tree = run(search, params, potential, potential_params, jnp.asarray(tokens), jnp.asarray(lengths), keys)
  check_pages(tree.cache)
  return tree


def _select(k: int, c_puct: float, first_child, visits, value_sum, finished):
  """One problem: the node a simulation expands (or re-evaluates, if finished), and the
  path length. Children are always evaluated when created, so their visits are >= 1."""

  def cond(node):
    return (first_child[node] >= 0) & ~finished[node]

  def body(node):
    kids = first_child[node] + jnp.arange(k)
    q = value_sum[kids] / jnp.maximum(visits[kids], 1.0)
    u = c_puct * (1.0 / k) * jnp.sqrt(visits[node]) / (1.0 + visits[kids])
    return kids[jnp.argmax(q + u)]

  return jax.lax.while_loop(cond, body, jnp.int32(0))


def _backup(parent, visits, value_sum, node, count, total):
  """Adds `count` visits and `total` value to `node` and its ancestors."""

  def body(c):
    n, v, s = c
    return parent[n], v.at[n].add(count), s.at[n].add(total)

  _, visits, value_sum = jax.lax.while_loop(lambda c: c[0] >= 0, body, (node, visits, value_sum))
  return visits, value_sum


def _answer(k, first_child, visits, value_sum, value, finished, parent):
  def cond(node):
    return (first_child[node] >= 0) & ~finished[node]

  def body(node):
    kids = first_child[node] + jnp.arange(k)
    q = value_sum[kids] / jnp.maximum(visits[kids], 1.0)
    return kids[jnp.argmax(visits[kids] + 1e-3 * q)]  # most visited; ties: the better Q

  node = jax.lax.while_loop(cond, body, jnp.int32(0))
  real = finished & (parent >= 0)
  best_finished = jnp.argmax(jnp.where(real, value, -jnp.inf))
  return jnp.where(finished[node] | ~jnp.any(real), node, best_finished).astype(jnp.int32)


def _node_store(lm, prefix, m: int, t: int, page_size: int, num_pages: int):
  """The tree's KV: one particle per node slot, holding the node's state before its last
  token (a paged cache for a `LanguageModel`, whose children share its pages; the model's
  own cache otherwise if it can `branch` and `adopt`); None when it cannot (the search then
  re-prefills each node it expands)."""
  if hasattr(lm, "init_paged_cache"):
    return lm.init_paged_cache(prefix, m, t, page_size, num_pages or (m + 1) * -(-t // page_size))
  store = lm.init_cache(prefix, m, t)
  return store if callable(getattr(store, "branch", None)) and callable(getattr(store, "adopt", None)) else None


def _pages_in_use(cache, b: int) -> jax.Array:
  """int32[B] pages of a paged cache referenced by its particles (0 for other caches)."""
  refcount = getattr(cache, "refcount", None)
  if refcount is None:
    return jnp.zeros((b,), jnp.int32)
  return jnp.sum(refcount > 0, axis=-1, dtype=jnp.int32)


def _grow(lm, params, first_logits, store, tokens, length, nodes, keys, live, *, n: int, ends: tuple[int, ...],
          t: int, pad_id: int, proposal: SamplingParams):
  """Continues node nodes[b] of each problem b with live[b], n times, until each continuation
  draws a token in `ends` or holds t tokens; the node's KV is shared, not recomputed.

  store: the node store (`_node_store`); tokens int32[B, M, T], length int32[B, M]: the
  nodes' tokens; first_logits float32[B, V]: the policy's logits after the prompt; keys [B]:
  token i is drawn with fold_in(keys[b], i), as `sample_jit` draws it.
  Returns (the continuations' cache, a `branch` of the store holding each one's state before
  its last token; tokens int32[B, n, T]; length int32[B, n]).
  """
  b = nodes.shape[0]
  rows = jnp.arange(b)
  work = store.branch(jnp.broadcast_to(nodes[:, None], (b, n)), live)
  node_tokens, node_len = tokens[rows, nodes], length[rows, nodes]
  pending = jnp.take_along_axis(node_tokens, jnp.maximum(node_len - 1, 0)[:, None], axis=1)
  refeed = live & (node_len > 0)  # the node's last token is fed now; the root has none
  logits, work = lm.decode(params, jnp.broadcast_to(pending, (b, n)), work,
                           active=jnp.broadcast_to(refeed[:, None], (b, n)))
  logits = jnp.where(refeed[:, None, None], logits, first_logits[:, None].astype(logits.dtype))
  toks = jnp.broadcast_to(node_tokens[:, None], (b, n, t))
  lens = jnp.broadcast_to(node_len[:, None], (b, n))

  def body(c):
    i, logits, work, toks, lens, going = c
    d = draw_tokens(logits, jax.vmap(lambda k: jax.random.fold_in(k, i))(keys), going, proposal=proposal,
                    stop_tokens=ends, pad_id=pad_id)
    toks = jnp.where(jax.nn.one_hot(lens, t, dtype=bool) & going[..., None], d.tokens[..., None], toks)
    lens = lens + going.astype(jnp.int32)
    more = going & ~d.stopped & (lens < t)  # a continuation's last token is fed when it is expanded
    new_logits, work = lm.decode(params, d.tokens, work, active=more)
    return i + 1, jnp.where(more[..., None], new_logits, logits), work, toks, lens, more

  going = live[:, None] & (lens < t)
  _, _, work, toks, lens, _ = jax.lax.while_loop(lambda c: jnp.any(c[-1]), body,
                                                 (jnp.int32(0), logits, work, toks, lens, going))
  return work, toks, lens


def _grow_from_scratch(lm, params, prompt_tokens, prompt_lengths, store, tokens, length, nodes, keys, live, *, n: int,
                       ends: tuple[int, ...], t: int, pad_id: int, proposal: SamplingParams):
  """`_grow` without a node store: prompt + node prefilled again, its n continuations drawn by
  `sample_jit` (the same tokens as `_grow`, up to float rounding). Returns (None, tokens
  int32[B, n, T], length int32[B, n])."""
  del store, live  # every problem draws; the caller keeps what it needs
  b = nodes.shape[0]
  rows = jnp.arange(b)
  node_tokens, node_len = tokens[rows, nodes], length[rows, nodes]
  prefix, prefix_len = suffix_prompts(prompt_tokens, prompt_lengths, node_tokens, node_len, pad_id)
  out = sample_jit(lm, params, prefix, prefix_len, keys, num_samples=n, max_new_tokens=t, params_s=proposal,
                   stop_tokens=ends, pad_id=pad_id, share_prefix=True, limits=jnp.maximum(t - node_len, 1))
  rep = lambda x: jnp.repeat(x, n, axis=0)  # noqa: E731  [B] -> [B*n]
  toks, lens = splice(rep(node_tokens), rep(node_len), out.tokens.reshape(b * n, t), out.lengths.reshape(b * n),
                      pad_id)
  return None, toks.reshape(b, n, t), lens.reshape(b, n)


@dataclasses.dataclass(frozen=True)
class _Search:
  """A search's static settings and its parts: `start`, then per simulation s `propose` (select
  and expand), the potential's score of the children, `accept` (insert and back up), then
  `end` (the answer's rollout). `_mcts_jit` runs them in one program; `_mcts_from_host`
  as separate programs with a host potential's work between them. A carry is (tree, the
  policy's logits after the prompt float32[B, V], the potential's state)."""

  lm: object
  simulations: int
  k: int
  t: int
  delimiters: tuple[int, ...]
  stop_tokens: tuple[int, ...]
  pad_id: int
  c_puct: float
  proposal: SamplingParams
  backup: str
  page_size: int
  num_pages: int
  share_kv: bool

  def start(self, params, potential, potential_params, prompt_tokens, prompt_lengths):
    b, m, t = prompt_tokens.shape[0], 1 + self.simulations * self.k, self.t
    first, prefix = self.lm.prefill(params, prompt_tokens, prompt_lengths)  # the prompt's KV, once per problem
    store = _node_store(self.lm, prefix, m, t, self.page_size, self.num_pages) if self.share_kv else None
    pot_state = potential.init(potential_params, prompt_tokens, prompt_lengths, self.k, t)
    tree = Tree(tokens=jnp.full((b, m, t), self.pad_id, jnp.int32), length=jnp.zeros((b, m), jnp.int32),
                parent=jnp.full((b, m), -1, jnp.int32), first_child=jnp.full((b, m), -1, jnp.int32),
                visits=jnp.zeros((b, m), jnp.float32).at[:, 0].set(1.0), value_sum=jnp.zeros((b, m), jnp.float32),
                value=jnp.zeros((b, m), jnp.float32), finished=jnp.zeros((b, m), bool),
                used=jnp.ones((b,), jnp.int32), decoded=jnp.zeros((b,), jnp.int32),
                born=jnp.full((b, m), -1, jnp.int32), cache=store, pages=_pages_in_use(store, b), expansions=self.k)
    return tree, first, pot_state

  def _grow(self, params, prompt_tokens, prompt_lengths, first, tree: Tree, *args, **kw):
    common = dict(t=self.t, pad_id=self.pad_id, proposal=self.proposal)
    if tree.cache is None:
      return _grow_from_scratch(self.lm, params, prompt_tokens, prompt_lengths, None, *args, **common, **kw)
    return _grow(self.lm, params, first, tree.cache, *args, **common, **kw)

  def propose(self, params, prompt_tokens, prompt_lengths, keys, carry, s):
    """Simulation s's selection and expansion: (node int32[B], expand bool[B], the children's
    work cache, child int32[B, K, T], child_len int32[B, K], done bool[B, K])."""
    tree, first, _ = carry
    rows = jnp.arange(tree.length.shape[0])
    node = jax.vmap(lambda *a: _select(self.k, self.c_puct, *a))(tree.first_child, tree.visits, tree.value_sum,
                                                                   tree.finished)
    expand = ~tree.finished[rows, node]  # a finished node is re-evaluated, not expanded
    step_keys = jax.vmap(lambda key: jax.random.fold_in(key, s))(keys)
    ends = tuple(sorted(set(self.delimiters) | set(self.stop_tokens)))
    work, child, child_len = self._grow(params, prompt_tokens, prompt_lengths, first, tree, tree.tokens, tree.length,
                                        node, step_keys, expand, n=self.k, ends=ends)
    last = jnp.take_along_axis(child, jnp.maximum(child_len - 1, 0)[..., None], axis=-1)[..., 0]
    done = jnp.any(last[..., None] == jnp.asarray(self.stop_tokens or (-1,), jnp.int32), axis=-1) | (child_len >= self.t)
    return node, expand, work, child, child_len, done

  def accept(self, carry, proposed, log_phi, s):
    """Simulation s's children, valued exp(log phi float32[B, K]), put in the tree and backed up."""
    tree, first, pot_state = carry
    node, expand, work, child, child_len, done = proposed
    b, k = child_len.shape
    rows = jnp.arange(b)
    leaf_len = tree.length[rows, node]
    child_value = jnp.exp(log_phi.astype(jnp.float32))  # [B, K]
    slots = tree.used[:, None] + jnp.arange(k)[None, :]  # [B, K]
    put = lambda x, v: x.at[rows[:, None], slots].set(jnp.where(expand[:, None], v, x[rows[:, None], slots]))  # noqa: E731
    cache = None if tree.cache is None else tree.cache.adopt(slots, work, expand)
    tree = tree.replace(
        tokens=tree.tokens.at[rows[:, None], slots].set(
            jnp.where(expand[:, None, None], child, tree.tokens[rows[:, None], slots])),
        length=put(tree.length, child_len), parent=put(tree.parent, jnp.broadcast_to(node[:, None], (b, k))),
        visits=put(tree.visits, jnp.ones((b, k))), value_sum=put(tree.value_sum, child_value),
        value=put(tree.value, child_value), finished=put(tree.finished, done),
        born=put(tree.born, jnp.full((b, k), s, jnp.int32)),
        first_child=tree.first_child.at[rows, node].set(jnp.where(expand, tree.used, tree.first_child[rows, node])),
        used=tree.used + jnp.where(expand, k, 0),
        decoded=tree.decoded + jnp.where(expand, jnp.sum(child_len - leaf_len[:, None], axis=1), 0),
        cache=cache, pages=jnp.maximum(tree.pages, _pages_in_use(cache, b)))
    leaf_value = jnp.max(child_value, axis=1) if self.backup == "max" else jnp.mean(child_value, axis=1)
    total = jnp.where(expand, leaf_value, tree.value[rows, node])  # one visit per simulation
    count = jnp.ones((b,), jnp.float32)
    visits, value_sum = jax.vmap(_backup)(tree.parent, tree.visits, tree.value_sum, node, count, total)
    return tree.replace(visits=visits, value_sum=value_sum), first, pot_state

  def end(self, params, prompt_tokens, prompt_lengths, keys, carry) -> Tree:
    """The chosen node, completed by one rollout when unfinished."""
    tree, first, _ = carry
    b = tree.length.shape[0]
    rows = jnp.arange(b)
    node = tree.answer()
    chosen, chosen_len = tree.tokens[rows, node], tree.length[rows, node]
    open_ = ~tree.finished[rows, node]
    roll_keys = jax.vmap(lambda key: jax.random.fold_in(key, self.simulations))(keys)
    work, rolled, rolled_len = self._grow(params, prompt_tokens, prompt_lengths, first, tree, tree.tokens,
                                          tree.length, node, roll_keys, open_, n=1, ends=self.stop_tokens)
    cache = tree.cache.replace(oom=tree.cache.oom | work.oom) if hasattr(work, "oom") else tree.cache
    return tree.replace(answer_tokens=jnp.where(open_[:, None], rolled[:, 0], chosen),
                        answer_length=jnp.where(open_, rolled_len[:, 0], chosen_len),
                        decoded=tree.decoded + jnp.where(open_, rolled_len[:, 0] - chosen_len, 0),
                        cache=cache, pages=jnp.maximum(tree.pages, _pages_in_use(work, b)))


def _children_scores(potential, potential_params, carry, proposed):
  """log phi float32[B, K] of the proposed children, whole sequences."""
  _, _, child, child_len, done = proposed[1:]
  return potential.score(potential_params, carry[2], child, child_len, done, jnp.ones(child_len.shape, bool))[0]


@functools.partial(jax.jit, static_argnames=("search", "potential"))
def _mcts_jit(search: _Search, params, potential, potential_params, prompt_tokens, prompt_lengths, keys):
  carry = search.start(params, potential, potential_params, prompt_tokens, prompt_lengths)

  def simulate(s, carry):
    proposed = search.propose(params, prompt_tokens, prompt_lengths, keys, carry, s)
    return search.accept(carry, proposed, _children_scores(potential, potential_params, carry, proposed), s)

  carry = jax.lax.fori_loop(0, search.simulations, simulate, carry)
  return search.end(params, prompt_tokens, prompt_lengths, keys, carry)


@functools.partial(jax.jit, static_argnames=("search", "potential"))
def _start(search, params, potential, potential_params, prompt_tokens, prompt_lengths, host_init):
  return search.start(params, with_host(potential, init=host_init), potential_params, prompt_tokens, prompt_lengths)


@functools.partial(jax.jit, static_argnames=("search",), donate_argnames=("carry",))
def _propose(search, params, prompt_tokens, prompt_lengths, keys, carry, s):
  return carry, search.propose(params, prompt_tokens, prompt_lengths, keys, carry, s)


@functools.partial(jax.jit, static_argnames=("search", "potential"), donate_argnames=("carry",))
def _accept(search, potential, potential_params, carry, proposed, host_score, s):
  log_phi = _children_scores(with_host(potential, score=host_score), potential_params, carry, proposed)
  return search.accept(carry, proposed, log_phi, s)


@functools.partial(jax.jit, static_argnames=("search",))
def _end(search, params, prompt_tokens, prompt_lengths, keys, carry):
  return search.end(params, prompt_tokens, prompt_lengths, keys, carry)


def _mcts_from_host(search: _Search, params, potential, potential_params, prompt_tokens, prompt_lengths, keys) -> Tree:
  """`_mcts_jit` for a potential with host work (`tts_jax.verifiers.base.needs_host`): the
  same parts as separate programs, the potential's `host_score` of each simulation's
  children between `_propose` and `_accept`, so no program holds a callback and JAX's
  persistent cache keeps them all. The same tree bit for bit."""
  prompts = np.asarray(prompt_tokens), np.asarray(prompt_lengths)
  carry = _start(search, params, potential, potential_params, prompt_tokens, prompt_lengths,
                 potential.host_init(*prompts))
  for s in range(search.simulations):
    s = jnp.int32(s)
    carry, proposed = _propose(search, params, prompt_tokens, prompt_lengths, keys, carry, s)
    child, child_len, done = jax.device_get(proposed[3:])
    scores = potential.host_score(*prompts, child, child_len, done, np.ones(child_len.shape, bool), search.t)
    carry = _accept(search, potential, potential_params, carry, proposed, scores, s)
  return _end(search, params, prompt_tokens, prompt_lengths, keys, carry)
