"""Local acceptance: resample each reasoning step until the verifier accepts it (the
"resample" move of LATTS, Locally Adaptive Test-Time Scaling), with a cap.

    out = local_acceptance(lm, params, prompts, lengths, key, potential=prm, num_samples=4, max_tries=8,
                           max_new_tokens=96, delimiters=ids.steps, stop_tokens=ids.stop)

Each of N independent solutions per prompt grows one step at a time. A step is drawn from the
policy and accepted with probability r = exp(log phi) of the potential on the solution so far
(a PRM's probability that it is still right, the exact checker's 1 - eps / eps); a rejected
step is drawn again, and the `max_tries`-th draw is kept whatever its score. Hard steps (low
acceptance) thus get more draws than easy ones: compute adapts to local difficulty. Per step,
the chosen token sequence a has probability

    p(a) r(a) (1 - (1 - rho)^(K - 1)) / rho + (1 - rho)^(K - 1) p(a),   rho = sum_a p(a) r(a),

which `tests/test_latts.py` checks against enumeration. The K candidate draws of a step are
made at once (one shared-prefix sampler call) with one uniform each; the first accepted is
kept, which is the sequential procedure's distribution exactly, and `decoded` counts only
the tokens the sequential procedure would draw (candidates up to the kept one).

The search is one program; with a potential that names host work (a step-tag PRM's reader,
`tts_jax.verifiers.base.needs_host`) its parts (`_Search`) run as programs with the host's
scoring of each step's candidates between them, the same result bit for bit, so JAX's
persistent cache keeps them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tts_jax.sampling import sample_jit, splice, suffix_prompts
from tts_jax.sampling.inputs import check_prompt_batch, check_token_ids, prompt_keys
from tts_jax.sampling.logits import SamplingParams
from tts_jax.verifiers import as_potential
from tts_jax.verifiers.base import needs_host, with_host


@struct.dataclass
class LocalAcceptance:
  """What `local_acceptance` returns (B prompts, N solutions each, T = max_new_tokens).

  tokens: int32[B, N, T]; length: int32[B, N]; log_potential: float32[B, N] the potential of
  each final solution; steps: int32[B, N]; tries: int32[B, N] step draws made (the sequential
  count); decoded: int32[B] policy tokens drawn (sequential count); prefilled: int32[B]
  prompt + prefix tokens prefilled (once per step and solution); scored: int32[B] solution
  tokens the potential read (each tried candidate whole, sequential count).
  """

  tokens: jax.Array
  length: jax.Array
  log_potential: jax.Array
  steps: jax.Array
  tries: jax.Array
  decoded: jax.Array
  prefilled: jax.Array
  scored: jax.Array


def local_acceptance(lm, params, prompt_tokens, prompt_lengths, key, *, potential, potential_params=None,
                     num_samples: int, max_tries: int, max_new_tokens: int, delimiters: Sequence[int],
                     stop_tokens: Sequence[int] = (), pad_id: int = 0,
                     proposal: SamplingParams = SamplingParams()) -> LocalAcceptance:
  """N solutions per prompt, each step resampled until accepted (at most `max_tries` draws).

  Args:
    lm, params: the policy; prompt_tokens int32[B, Tp], prompt_lengths int32[B].
    key: one PRNG key, or one per prompt ([B]).
    potential, potential_params: scores whole partial solutions; acceptance probability
      exp(log phi), so it must be a log-probability (<= 0), e.g. `OutcomePotential` of a PRM
      (transform "log") or `step_oracle(task)`.
    num_samples: N; max_tries: K >= 1 draws per step at most (K = 1: plain sampling).
    max_new_tokens: T; delimiters end a step; stop_tokens end a solution; proposal: how steps
      are drawn.
  """
  for name, v in (("num_samples", num_samples), ("max_tries", max_tries)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be an int >= 1, got {v!r}")
  if not delimiters:
    raise ValueError("local_acceptance needs step delimiters (token ids that end a step)")
  tokens, lengths = check_prompt_batch(lm, prompt_tokens, prompt_lengths, max_new_tokens)
  check_token_ids(lm, delimiters=delimiters, stop_tokens=stop_tokens, pad_id=(pad_id,))
  keys = prompt_keys(key, tokens.shape[0])
  search = _Search(lm, n=num_samples, k=max_tries, t=max_new_tokens, delimiters=tuple(int(d) for d in delimiters),
                   stop_tokens=tuple(int(s) for s in stop_tokens), pad_id=int(pad_id), proposal=proposal)
  potential = as_potential(potential)
  run = _from_host if needs_host(potential) else _local_acceptance_jit  # host work between programs, not called back
  return run(search, params, potential, potential_params, jnp.asarray(tokens), jnp.asarray(lengths), keys)


@dataclasses.dataclass(frozen=True)
class _Search:
  """The search's static settings and its parts: `start`, then per step `propose` (K candidate
  steps per solution), the potential's score of the candidates, `accept` (the first accepted),
  until every solution is done, then `end`. `_local_acceptance_jit` runs them in one program;
  `_from_host` as separate programs with a host potential's work between them. A carry is (the
  loop's state, the potential's state)."""

  lm: object
  n: int
  k: int
  t: int
  delimiters: tuple[int, ...]
  stop_tokens: tuple[int, ...]
  pad_id: int
  proposal: SamplingParams

  def start(self, potential, potential_params, prompt_tokens, prompt_lengths):
    r, t = prompt_tokens.shape[0] * self.n, self.t  # one row per solution: row b * N + i
    pot_state = potential.init(potential_params, prompt_tokens, prompt_lengths, self.n * self.k, t)
    zeros = jnp.zeros((r,), jnp.int32)
    state = (jnp.full((r, t), self.pad_id, jnp.int32), zeros, jnp.zeros((r,), jnp.float32), zeros, zeros,
             jnp.zeros((r,), bool), zeros, jnp.zeros((), jnp.int32), zeros, zeros)
    return state, pot_state

  def propose(self, params, prompt_tokens, prompt_lengths, keys, carry):
    """The step's K candidates per solution: (cand int32[B, N K, T], cand_len int32[B, N K],
    cand_done bool[B, N K], their drawn lengths int32[R, K], the acceptance keys [R])."""
    tokens, length, *_ = carry[0]
    s = carry[0][7]
    b, n, k, t = prompt_tokens.shape[0], self.n, self.k, self.t
    r = b * n
    rows_p, rows_l = jnp.repeat(prompt_tokens, n, axis=0), jnp.repeat(prompt_lengths, n)
    row_keys = jax.vmap(lambda kk: jax.vmap(lambda i: jax.random.fold_in(kk, i))(jnp.arange(n)))(keys).reshape(-1)
    ks = jax.vmap(lambda kk: jax.random.split(jax.random.fold_in(kk, s)))(row_keys)  # [R, 2]
    prefix, prefix_len = suffix_prompts(rows_p, rows_l, tokens, length, self.pad_id)
    out = sample_jit(self.lm, params, prefix, prefix_len, ks[:, 0], num_samples=k, max_new_tokens=t,
                     params_s=self.proposal, stop_tokens=tuple(sorted(set(self.delimiters) | set(self.stop_tokens))),
                     pad_id=self.pad_id, share_prefix=True, limits=jnp.maximum(t - length, 1))
    cand, cand_len = splice(jnp.repeat(tokens, k, axis=0), jnp.repeat(length, k), out.tokens.reshape(r * k, t),
                            out.lengths.reshape(r * k), self.pad_id)
    cand, cand_len = cand.reshape(b, n * k, t), cand_len.reshape(b, n * k)
    last = jnp.take_along_axis(cand, jnp.maximum(cand_len - 1, 0)[..., None], axis=-1)[..., 0]
    cand_done = jnp.any(last[..., None] == jnp.asarray(self.stop_tokens or (-1,), jnp.int32), axis=-1) | (cand_len >= t)
    return cand, cand_len, cand_done, out.lengths.reshape(r, k), ks[:, 1]

  def accept(self, prompt_lengths, carry, proposed, log_phi):
    """Each live solution takes its first accepted candidate (log phi float32[B, N K])."""
    (tokens, length, logphi, steps, tries, done, decoded, s, prefilled, scored), pot_state = carry
    cand, cand_len, cand_done, drawn_len, accept_keys = proposed
    r, k = drawn_len.shape
    u = jax.vmap(lambda kk: jax.random.uniform(kk, (k,)))(accept_keys)  # [R, K]
    ok = jnp.log(u) < log_phi.reshape(r, k)  # accept w.p. exp(log phi)
    ok = ok.at[:, k - 1].set(True)  # the cap: the K-th draw is kept whatever its score
    pick = jnp.argmax(ok, axis=1)  # the first accepted draw
    rows = jnp.arange(r)
    flat = lambda x: x.reshape((r, k) + x.shape[2:])  # noqa: E731
    new_tokens = flat(cand)[rows, pick]
    upto = jnp.arange(k)[None, :] <= pick[:, None]  # the draws a sequential procedure makes
    drawn = jnp.where(upto, drawn_len, 0).sum(1)
    read = jnp.where(upto, flat(cand_len), 0).sum(1)
    live = ~done
    prefilled = prefilled + jnp.where(live, jnp.repeat(prompt_lengths, self.n) + length, 0)
    scored = scored + jnp.where(live, read, 0)
    tokens = jnp.where(live[:, None], new_tokens, tokens)
    length = jnp.where(live, flat(cand_len)[rows, pick], length)
    logphi = jnp.where(live, flat(log_phi)[rows, pick], logphi)
    steps = steps + live.astype(jnp.int32)
    tries = tries + jnp.where(live, pick + 1, 0)
    decoded = decoded + jnp.where(live, drawn, 0)
    done = done | flat(cand_done)[rows, pick]
    return (tokens, length, logphi, steps, tries, done, decoded, s + 1, prefilled, scored), pot_state

  def end(self, carry) -> LocalAcceptance:
    tokens, length, logphi, steps, tries, _, decoded, _, prefilled, scored = carry[0]
    shape = lambda x: x.reshape((-1, self.n) + x.shape[1:])  # noqa: E731
    return LocalAcceptance(tokens=shape(tokens), length=shape(length), log_potential=shape(logphi),
                           steps=shape(steps), tries=shape(tries), decoded=shape(decoded).sum(axis=1),
                           prefilled=shape(prefilled).sum(axis=1), scored=shape(scored).sum(axis=1))


def _candidate_scores(potential, potential_params, carry, proposed):
  """log phi float32[B, N K] of the proposed candidates, whole sequences."""
  cand, cand_len, cand_done = proposed[:3]
  return potential.score(potential_params, carry[1], cand, cand_len, cand_done, jnp.ones(cand_len.shape, bool))[0]


@functools.partial(jax.jit, static_argnames=("search", "potential"))
def _local_acceptance_jit(search: _Search, params, potential, potential_params, prompt_tokens, prompt_lengths, keys):
  def body(carry):
    proposed = search.propose(params, prompt_tokens, prompt_lengths, keys, carry)
    return search.accept(prompt_lengths, carry, proposed,
                         _candidate_scores(potential, potential_params, carry, proposed))

  carry = search.start(potential, potential_params, prompt_tokens, prompt_lengths)
  return search.end(jax.lax.while_loop(lambda c: ~jnp.all(c[0][5]), body, carry))


@functools.partial(jax.jit, static_argnames=("search", "potential"))
def _start(search, potential, potential_params, prompt_tokens, prompt_lengths, host_init):
  return search.start(with_host(potential, init=host_init), potential_params, prompt_tokens, prompt_lengths)


@functools.partial(jax.jit, static_argnames=("search",), donate_argnames=("carry",))
def _propose(search, params, prompt_tokens, prompt_lengths, keys, carry):
  return carry, search.propose(params, prompt_tokens, prompt_lengths, keys, carry)


@functools.partial(jax.jit, static_argnames=("search", "potential"), donate_argnames=("carry",))
def _accept(search, potential, potential_params, prompt_lengths, carry, proposed, host_score):
  log_phi = _candidate_scores(with_host(potential, score=host_score), potential_params, carry, proposed)
  carry = search.accept(prompt_lengths, carry, proposed, log_phi)
  return carry, jnp.all(carry[0][5])


@functools.partial(jax.jit, static_argnames=("search",))
def _end(search, carry):
  return search.end(carry)


def _from_host(search: _Search, params, potential, potential_params, prompt_tokens, prompt_lengths, keys):
  """`_local_acceptance_jit` for a potential with host work (`tts_jax.verifiers.base.needs_host`):
  the same parts as separate programs, the potential's `host_score` of each step's candidates
  between `_propose` and `_accept`, so no program holds a callback and JAX's persistent cache
  keeps them all. The same result bit for bit."""
  prompts = np.asarray(prompt_tokens), np.asarray(prompt_lengths)
  carry = _start(search, potential, potential_params, prompt_tokens, prompt_lengths, potential.host_init(*prompts))
  over = False  # no solution is done at the start (the one-program loop tests it first)
  while not over:
    carry, proposed = _propose(search, params, prompt_tokens, prompt_lengths, keys, carry)
    cand, cand_len, cand_done = jax.device_get(proposed[:3])
    scores = potential.host_score(*prompts, cand, cand_len, cand_done, np.ones(cand_len.shape, bool), search.t)
    carry, over = _accept(search, potential, potential_params, prompt_lengths, carry, proposed, scores)
    over = bool(over)
  return _end(search, carry)
