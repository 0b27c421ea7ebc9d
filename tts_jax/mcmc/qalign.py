"""QAlign / QUEST: Metropolis-Hastings over completions (Faria & Smith 2024; QAlign, Faria et
al. 2025), targeting sigma(x) proportional to p(x) exp(r(x) / beta) for each prompt.

    chain = qalign(lm, params, prompts, lengths, key, reward=orm_potential, reward_params=orm_params,
                   steps=32, beta=1.0, max_new_tokens=96, stop_tokens=(eos,))
    chain.tokens[b, c, k, :chain.lengths[b, c, k]]   # chain c of prompt b after step k

A move keeps a uniformly chosen prefix x_<i (i in 0 .. |x| - 1) of the current completion and
resamples the rest from the model, p(. | prompt, x_<i), up to the same total length T. The
model terms cancel in the Metropolis-Hastings ratio, leaving

    alpha = min(1, exp((r(x') - r(x)) / beta) * |x| / |x'|)

(|x| / |x'|: the chance of choosing index i in either direction). Chains start from samples of
p; the model is the proposal, so sampling must be plain (temperature 1, no top-k/p). The
reward is any `tts_jax.verifiers` potential that scores whole sequences (a function of the
tokens, `OraclePotential`, or `OutcomePotential` for an ORM), read as r = log phi.
Everything runs in one jitted `lax.scan` over steps; `tests/test_qalign.py` checks the chains
against enumeration on a tabular LM (stationary distribution, acceptance rate). A reward that
names host work (`tts_jax.verifiers.base.needs_host`, e.g. a step-tag PRM's reader) instead
runs the same parts (`_Chains`) as programs with the host's scoring between them (per device
on a mesh), the same chains bit for bit, so JAX's persistent cache keeps them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tts_jax.parallel import (MODEL, device_rows, each_device, host_rows, per_device, place_params, shard_batch,
                              to_host, unpad)
from tts_jax.sampling import sample_jit, splice, suffix_prompts
from tts_jax.sampling.inputs import check_prompt_batch, check_token_ids, prompt_keys
from tts_jax.sampling.logits import SamplingParams
from tts_jax.verifiers import as_potential
from tts_jax.verifiers.base import needs_host, with_host


@struct.dataclass
class QAlignChains:
  """What `qalign` returns: K + 1 states (the start, then after each of K steps) of C chains
  for each of B prompts (T = max_new_tokens), prompt-major like every batched output.

  tokens: int32[B, C, K + 1, T] (pad after each completion's end).
  lengths: int32[B, C, K + 1].
  reward: float32[B, C, K + 1] r(x) of each state (before dividing by beta).
  accepted: bool[B, C, K] whether step k's proposal was accepted.
  drawn: int32[B, C, K + 1] policy tokens generated for each state's proposal (the start's
    whole completion, then each step's suffix, accepted or not).
  kept: int32[B, C, K + 1] the prefix each proposal kept (0 for the start): a step prefills
    prompt + kept tokens, decodes `drawn`, and the reward reads kept + drawn.
  """

  tokens: jax.Array
  lengths: jax.Array
  reward: jax.Array
  accepted: jax.Array
  drawn: jax.Array
  kept: jax.Array

  def acceptance_rate(self) -> jax.Array:
    """float32[B]: the fraction of accepted moves of each prompt's chains."""
    return jnp.mean(self.accepted.astype(jnp.float32), axis=(1, 2))


def qalign(lm, params, prompt_tokens, prompt_lengths, key, *, reward, reward_params=None, steps: int,
           beta: float = 1.0, num_chains: int = 1, max_new_tokens: int, stop_tokens: Sequence[int] = (),
           pad_id: int = 0, mesh=None) -> QAlignChains:
  """Runs `num_chains` QAlign chains of `steps` Metropolis-Hastings steps for each of B prompts.

  Args:
    lm, params: the policy (`CausalLM` contract); it is both the base model p and the proposal.
    prompt_tokens: int32[B, Tp] right-padded; prompt_lengths: int32[B].
    key: one PRNG key, or one per prompt ([B]); chain c of prompt b uses its own stream.
    reward, reward_params: a potential scoring whole completions (r = its log phi), e.g. a
      function (tokens int32[B, C, T], lengths int32[B, C], done bool[B, C]) -> float32[B, C].
    steps: K >= 0 Metropolis-Hastings steps; beta > 0: the temperature of the reward.
    num_chains: C independent chains per prompt.
    max_new_tokens: T, the longest completion; stop_tokens end a completion; pad_id fills.
    mesh: a `tts_jax.parallel` mesh with model=1: prompts split over "data", each device
      running the one-device program on its prompts (the same chains for any device count).

  Returns:
    `QAlignChains`.
  """
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
    raise ValueError(f"steps must be an int >= 0, got {steps!r}")
  if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1:
    raise ValueError(f"num_chains must be an int >= 1, got {num_chains!r}")
  if not np.isfinite(beta) or beta <= 0:
    raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
  tokens, lengths = check_prompt_batch(lm, prompt_tokens, prompt_lengths, max_new_tokens)
  check_token_ids(lm, stop_tokens=stop_tokens, pad_id=(pad_id,))
  b = tokens.shape[0]
  keys = prompt_keys(key, b)
  chains = _Chains(lm, steps=steps, beta=float(beta), num_chains=num_chains, max_new_tokens=max_new_tokens,
                   stop_tokens=tuple(int(t) for t in stop_tokens), pad_id=int(pad_id))
  reward = as_potential(reward)
  if mesh is not None and mesh.shape[MODEL] != 1:
    raise ValueError(f"qalign splits prompts over a mesh's data axis only; got model={mesh.shape[MODEL]}")
  if mesh is not None:
    params, reward_params = place_params(mesh, params), place_params(mesh, reward_params)
  rows = shard_batch(mesh, jnp.asarray(tokens), jnp.asarray(lengths), keys)
  if needs_host(reward):  # host work between programs, not called back
    out = _from_host(chains, params, reward, reward_params, *rows, mesh=mesh)
  elif mesh is None:
    out = _qalign_jit(chains, params, reward, reward_params, *rows)
  else:
    out = _qalign_per_device(chains, mesh, params, reward, reward_params, *rows)
  return out if mesh is None else unpad(out, b)


@dataclasses.dataclass(frozen=True)
class _Chains:
  """The chains' static settings and the parts of a run: `start` (the reward's state and the
  first completions), then per step k `propose` (a kept prefix and a new suffix per chain),
  the reward's score of the proposals, `accept` (Metropolis-Hastings), then `end`.
  `_qalign_jit` runs them in one `lax.scan`; `_from_host` as separate programs with a host
  reward's work between them. Rows are chains, row b * C + c."""

  lm: object
  steps: int
  beta: float
  num_chains: int
  max_new_tokens: int
  stop_tokens: tuple[int, ...]
  pad_id: int

  def _chain_keys(self, keys):
    c = self.num_chains
    return jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(c)))(keys).reshape(-1)

  def _suffixes(self, params, prompt_tokens, prompt_lengths, step_keys, keep, tokens):
    """Suffixes after tokens[:keep] from the model, ending at the total length T. -> (tokens
    int32[B C, T], lengths int32[B C], drawn int32[B C])."""
    c, t = self.num_chains, self.max_new_tokens
    rows_p, rows_l = jnp.repeat(prompt_tokens, c, axis=0), jnp.repeat(prompt_lengths, c)  # [B*C, Tp]
    rows, row_lengths = suffix_prompts(rows_p, rows_l, tokens, keep, self.pad_id)
    proposal = SamplingParams()  # the model itself: its terms cancel in the acceptance ratio
    out = sample_jit(self.lm, params, rows, row_lengths, step_keys, num_samples=1, max_new_tokens=t,
                     params_s=proposal, stop_tokens=self.stop_tokens, pad_id=self.pad_id, share_prefix=True,
                     limits=t - keep)
    return splice(tokens, keep, out.tokens[:, 0], out.lengths[:, 0], self.pad_id) + (out.lengths[:, 0],)

  def start(self, params, reward, reward_params, prompt_tokens, prompt_lengths, keys):
    """(the reward's state, the first completions (tokens, lengths, drawn))."""
    b, c, t = prompt_tokens.shape[0], self.num_chains, self.max_new_tokens
    state = reward.init(reward_params, prompt_tokens, prompt_lengths, c, t)
    k0 = jax.vmap(lambda k: jax.random.fold_in(k, 0))(self._chain_keys(keys))
    first = self._suffixes(params, prompt_tokens, prompt_lengths, k0, jnp.zeros((b * c,), jnp.int32),
                           jnp.full((b * c, t), self.pad_id, jnp.int32))
    return state, first

  def score(self, reward, reward_params, state, tokens, lengths):
    """r float32[B C] of completions tokens int32[B C, T], lengths int32[B C]."""
    b, c = lengths.shape[0] // self.num_chains, self.num_chains
    done = jnp.ones((b, c), bool)
    r, _ = reward.score(reward_params, state, tokens.reshape(b, c, -1), lengths.reshape(b, c), done, done)
    return r.reshape(-1).astype(jnp.float32)

  def propose(self, params, prompt_tokens, prompt_lengths, keys, chain, k):
    """Step k's proposals from the chains' states chain = (tokens, lengths, r): (tokens,
    lengths, drawn, keep, the acceptance keys [B C])."""
    tokens, lengths, _ = chain
    ks = jax.vmap(lambda key: jax.random.split(jax.random.fold_in(key, k), 3))(self._chain_keys(keys))
    keep = jax.vmap(lambda key, n: jax.random.randint(key, (), 0, jnp.maximum(n, 1)))(ks[:, 0], lengths)
    new_tokens, new_lengths, drawn = self._suffixes(params, prompt_tokens, prompt_lengths, ks[:, 1], keep, tokens)
    return new_tokens, new_lengths, drawn, keep, ks[:, 2]

  def accept(self, chain, proposed, new_r):
    """-> (the new states, step k's record (tokens, lengths, r, accepted, drawn, keep))."""
    tokens, lengths, r = chain
    new_tokens, new_lengths, drawn, keep, accept_keys = proposed
    log_alpha = ((new_r - r) / self.beta + jnp.log(jnp.maximum(lengths, 1).astype(jnp.float32))
                 - jnp.log(jnp.maximum(new_lengths, 1).astype(jnp.float32)))
    u = jax.vmap(jax.random.uniform)(accept_keys)
    accept = jnp.log(u) < log_alpha  # a proposal with r' = -inf is never accepted
    tokens = jnp.where(accept[:, None], new_tokens, tokens)
    lengths = jnp.where(accept, new_lengths, lengths)
    r = jnp.where(accept, new_r, r)
    return (tokens, lengths, r), (tokens, lengths, r, accept, drawn, keep)

  def end(self, first, reward0, history) -> QAlignChains:
    """The chains from the first completions and the K steps' records (each stacked [K, B C, ...])."""
    tokens0, lengths0, new0 = first
    hist_t, hist_l, hist_r, accepted, drawn, kept = history
    c = self.num_chains
    # [K (+1), B*C, ...] -> [B, C, K (+1), ...]
    chain_major = lambda x: jnp.moveaxis(x.reshape((x.shape[0], -1, c) + x.shape[2:]), 0, 2)  # noqa: E731
    with_start = lambda first, rest: chain_major(jnp.concatenate([first[None], rest]))  # noqa: E731
    return QAlignChains(tokens=with_start(tokens0, hist_t), lengths=with_start(lengths0, hist_l),
                        reward=with_start(reward0, hist_r), accepted=chain_major(accepted),
                        drawn=with_start(new0, drawn), kept=with_start(jnp.zeros_like(lengths0), kept))

  def empty_history(self, first):
    """Zeroed records of the K steps, [K, B C, ...] (the host-driven run fills them in place)."""
    tokens0, lengths0, _ = first
    k = self.steps
    zeros = lambda x, dtype=None: jnp.zeros((k,) + x.shape, dtype or x.dtype)  # noqa: E731
    return (zeros(tokens0), zeros(lengths0), zeros(lengths0, jnp.float32), zeros(lengths0, bool), zeros(lengths0),
            zeros(lengths0))


@functools.partial(jax.jit, static_argnames=("chains", "mesh", "reward"))
def _qalign_per_device(chains, mesh, params, reward, reward_params, tokens, lengths, keys):
  return per_device(mesh, lambda t, l, k: _qalign_jit(chains, params, reward, reward_params, t, l, k),
                    tokens, lengths, keys)


@functools.partial(jax.jit, static_argnames=("chains", "reward"))
def _qalign_jit(chains: _Chains, params, reward, reward_params, prompt_tokens, prompt_lengths, keys):
  state, first = chains.start(params, reward, reward_params, prompt_tokens, prompt_lengths, keys)
  reward0 = chains.score(reward, reward_params, state, *first[:2])

  def step(chain, k):
    proposed = chains.propose(params, prompt_tokens, prompt_lengths, keys, chain, k)
    return chains.accept(chain, proposed, chains.score(reward, reward_params, state, *proposed[:2]))

  _, history = jax.lax.scan(step, (first[0], first[1], reward0), jnp.arange(1, chains.steps + 1))
  return chains.end(first, reward0, history)


# The host-driven run (a reward with host work): a carry is (the reward's state, the first
# completions, r of the first, the chains' states, the steps' records so far).

@functools.partial(jax.jit, static_argnames=("chains", "reward", "mesh"))
def _start(chains, params, reward, reward_params, prompt_tokens, prompt_lengths, keys, host_init, mesh):
  def part(prompt_tokens, prompt_lengths, keys, init):
    state, first = chains.start(params, with_host(reward, init=init), reward_params, prompt_tokens, prompt_lengths,
                                keys)
    return state, first
  return each_device(mesh, part, (prompt_tokens, prompt_lengths, keys, host_init))


@functools.partial(jax.jit, static_argnames=("chains", "reward", "mesh"), donate_argnames=("started",))
def _first(chains, reward, reward_params, started, host_score, mesh):
  def part(started, score):
    state, first = started
    r0 = chains.score(with_host(reward, score=score), reward_params, state, *first[:2])
    return state, first, r0, (first[0], first[1], r0), chains.empty_history(first)
  return each_device(mesh, part, (host_score,), carry=started)


@functools.partial(jax.jit, static_argnames=("chains", "mesh"))
def _propose(chains, params, prompt_tokens, prompt_lengths, keys, carry, k, mesh):
  def part(carry, prompt_tokens, prompt_lengths, keys):
    return chains.propose(params, prompt_tokens, prompt_lengths, keys, carry[3], k)
  return each_device(mesh, part, (prompt_tokens, prompt_lengths, keys), carry=carry)


@functools.partial(jax.jit, static_argnames=("chains", "reward", "mesh"), donate_argnames=("carry",))
def _accept(chains, reward, reward_params, carry, proposed, host_score, k, mesh):
  def part(both, score):
    (state, first, r0, chain, history), proposed = both
    new_r = chains.score(with_host(reward, score=score), reward_params, state, *proposed[:2])
    chain, record = chains.accept(chain, proposed, new_r)
    history = jax.tree.map(lambda h, x: h.at[k - 1].set(x), history, record)
    return state, first, r0, chain, history
  return each_device(mesh, part, (host_score,), carry=(carry, proposed))


@functools.partial(jax.jit, static_argnames=("chains", "mesh"))
def _end(chains, carry, mesh):
  def part(carry):
    _, first, r0, _, history = carry
    return chains.end(first, r0, history)
  return each_device(mesh, part, (), carry=carry, rows_out=True)


def _from_host(chains: _Chains, params, reward, reward_params, prompt_tokens, prompt_lengths, keys, mesh=None):
  """`_qalign_jit` (per device on a data mesh) for a reward with host work
  (`tts_jax.verifiers.base.needs_host`): the same parts as separate programs, the reward's
  `host_score` of each state's completions between them, so no program holds a callback and
  JAX's persistent cache keeps them all. The same chains bit for bit."""
  prompts = to_host((prompt_tokens, prompt_lengths))  # (every process holds them all)
  c = chains.num_chains
  mine = lambda d, x: x[device_rows(mesh, len(x), d)]  # noqa: E731  the rows `host_rows` gives fn(d, ...)

  def score(d, tokens, lengths):  # device d's (or all) chains' completions [P C, T] -> the host arrays
    done = np.ones((lengths.size // c, c), bool)
    return reward.host_score(mine(d, prompts[0]), mine(d, prompts[1]), tokens.reshape(-1, c, tokens.shape[-1]),
                             lengths.reshape(-1, c), done, done, chains.max_new_tokens)

  host_score = functools.partial(host_rows, mesh, score)
  host_init = host_rows(mesh, lambda d: reward.host_init(mine(d, prompts[0]), mine(d, prompts[1])))
  started = _start(chains, params, reward, reward_params, prompt_tokens, prompt_lengths, keys, host_init, mesh=mesh)
  carry = _first(chains, reward, reward_params, started, host_score(*started[1][:2]), mesh=mesh)
  for k in range(1, chains.steps + 1):
    k = jnp.int32(k)
    proposed = _propose(chains, params, prompt_tokens, prompt_lengths, keys, carry, k, mesh=mesh)
    carry = _accept(chains, reward, reward_params, carry, proposed, host_score(*proposed[:2]), k, mesh=mesh)
  return _end(chains, carry, mesh=mesh)
