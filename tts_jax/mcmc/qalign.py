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
against enumeration on a tabular LM (stationary distribution, acceptance rate).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tts_jax.parallel import MODEL, per_device, place_params, shard_batch, unpad
from tts_jax.sampling import sample_jit, splice, suffix_prompts
from tts_jax.sampling.inputs import check_prompt_batch, check_token_ids, prompt_keys
from tts_jax.sampling.logits import SamplingParams
from tts_jax.verifiers import as_potential


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
  static = dict(steps=steps, beta=float(beta), num_chains=num_chains, max_new_tokens=max_new_tokens,
                stop_tokens=tuple(int(t) for t in stop_tokens), pad_id=int(pad_id))
  reward = as_potential(reward)
  if mesh is None:
    return _qalign_jit(lm, params, reward, reward_params, jnp.asarray(tokens), jnp.asarray(lengths), keys, **static)
  if mesh.shape[MODEL] != 1:
    raise ValueError(f"qalign splits prompts over a mesh's data axis only; got model={mesh.shape[MODEL]}")
  params, reward_params = place_params(mesh, params), place_params(mesh, reward_params)
  rows = shard_batch(mesh, jnp.asarray(tokens), jnp.asarray(lengths), keys)
  return unpad(_qalign_per_device(lm, mesh, params, reward, reward_params, *rows, **static), b)


@functools.partial(jax.jit, static_argnames=("lm", "mesh", "reward", "steps", "beta", "num_chains", "max_new_tokens",
                                             "stop_tokens", "pad_id"))
def _qalign_per_device(lm, mesh, params, reward, reward_params, tokens, lengths, keys, **static):
  return per_device(mesh, lambda t, l, k: _qalign_jit(lm, params, reward, reward_params, t, l, k, **static),
                    tokens, lengths, keys)


@functools.partial(jax.jit, static_argnames=("lm", "reward", "steps", "beta", "num_chains", "max_new_tokens",
                                             "stop_tokens", "pad_id"))
def _qalign_jit(lm, params, reward, reward_params, prompt_tokens, prompt_lengths, keys, *, steps, beta, num_chains,
                max_new_tokens, stop_tokens, pad_id):
  b, c, t = prompt_tokens.shape[0], num_chains, max_new_tokens
  proposal = SamplingParams()  # the model itself: its terms cancel in the acceptance ratio
  rows_p = jnp.repeat(prompt_tokens, c, axis=0)  # [B*C, Tp], row b*C + c
  rows_l = jnp.repeat(prompt_lengths, c)
  chain_keys = jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(c)))(keys).reshape(-1)
  state = reward.init(reward_params, prompt_tokens, prompt_lengths, c, t)

  def score(tokens, lengths):
    done = jnp.ones((b, c), bool)
    r, _ = reward.score(reward_params, state, tokens.reshape(b, c, t), lengths.reshape(b, c), done, done)
    return r.reshape(-1).astype(jnp.float32)

  def propose(step_keys, keep, tokens):
    """Suffixes after tokens[:keep] from the model, ending at the total length T."""
    rows, row_lengths = suffix_prompts(rows_p, rows_l, tokens, keep, pad_id)
    out = sample_jit(lm, params, rows, row_lengths, step_keys, num_samples=1, max_new_tokens=t, params_s=proposal,
                      stop_tokens=stop_tokens, pad_id=pad_id, share_prefix=True, limits=t - keep)
    return splice(tokens, keep, out.tokens[:, 0], out.lengths[:, 0], pad_id) + (out.lengths[:, 0],)

  k0 = jax.vmap(lambda k: jax.random.fold_in(k, 0))(chain_keys)
  zeros = jnp.zeros((b * c,), jnp.int32)
  tokens0, lengths0, new0 = propose(k0, zeros, jnp.full((b * c, t), pad_id, jnp.int32))
  reward0 = score(tokens0, lengths0)

  def step(carry, k):
    tokens, lengths, r = carry
    ks = jax.vmap(lambda key: jax.random.split(jax.random.fold_in(key, k), 3))(chain_keys)
    keep = jax.vmap(lambda key, n: jax.random.randint(key, (), 0, jnp.maximum(n, 1)))(ks[:, 0], lengths)
    new_tokens, new_lengths, drawn = propose(ks[:, 1], keep, tokens)
    new_r = score(new_tokens, new_lengths)
    log_alpha = ((new_r - r) / beta + jnp.log(jnp.maximum(lengths, 1).astype(jnp.float32))
                 - jnp.log(jnp.maximum(new_lengths, 1).astype(jnp.float32)))
    u = jax.vmap(jax.random.uniform)(ks[:, 2])
    accept = jnp.log(u) < log_alpha  # a proposal with r' = -inf is never accepted
    tokens = jnp.where(accept[:, None], new_tokens, tokens)
    lengths = jnp.where(accept, new_lengths, lengths)
    r = jnp.where(accept, new_r, r)
    return (tokens, lengths, r), (tokens, lengths, r, accept, drawn, keep)

  _, (hist_t, hist_l, hist_r, accepted, drawn, kept) = jax.lax.scan(step, (tokens0, lengths0, reward0),
                                                                jnp.arange(1, steps + 1))
  # [K (+1), B*C, ...] -> [B, C, K (+1), ...]
  chain_major = lambda x: jnp.moveaxis(x.reshape((x.shape[0], b, c) + x.shape[2:]), 0, 2)
  with_start = lambda first, rest: chain_major(jnp.concatenate([first[None], rest]))
  return QAlignChains(tokens=with_start(tokens0, hist_t), lengths=with_start(lengths0, hist_l),
                      reward=with_start(reward0, hist_r), accepted=chain_major(accepted),
                      drawn=with_start(new0, drawn), kept=with_start(zeros, kept))
