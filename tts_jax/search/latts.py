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
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import struct

from tts_jax.sampling import sample_jit, splice, suffix_prompts
from tts_jax.sampling.inputs import check_prompt_batch, check_token_ids, prompt_keys
from tts_jax.sampling.logits import SamplingParams
from tts_jax.verifiers import as_potential


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
  return _local_acceptance_jit(lm, params, as_potential(potential), potential_params, jnp.asarray(tokens),
                               jnp.asarray(lengths), keys, n=num_samples, k=max_tries, t=max_new_tokens,
                               delimiters=tuple(int(d) for d in delimiters),
                               stop_tokens=tuple(int(s) for s in stop_tokens), pad_id=int(pad_id), proposal=proposal)


@functools.partial(jax.jit, static_argnames=("lm", "potential", "n", "k", "t", "delimiters", "stop_tokens", "pad_id",
                                             "proposal"))
def _local_acceptance_jit(lm, params, potential, potential_params, prompt_tokens, prompt_lengths, keys, *, n, k, t,
                          delimiters, stop_tokens, pad_id, proposal):
  b = prompt_tokens.shape[0]
  r = b * n  # one row per solution: row b * N + i
  rows_p, rows_l = jnp.repeat(prompt_tokens, n, axis=0), jnp.repeat(prompt_lengths, n)
  row_keys = jax.vmap(lambda kk: jax.vmap(lambda i: jax.random.fold_in(kk, i))(jnp.arange(n)))(keys).reshape(-1)
  pot_state = potential.init(potential_params, prompt_tokens, prompt_lengths, n * k, t)
  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)
  step_stops = tuple(sorted(set(delimiters) | set(stop_tokens)))

  def cond(c):
    return ~jnp.all(c[5])

  def body(c):
    tokens, length, logphi, steps, tries, done, decoded, s, prefilled, scored = c
    ks = jax.vmap(lambda kk: jax.random.split(jax.random.fold_in(kk, s)))(row_keys)  # [R, 2]
    prefix, prefix_len = suffix_prompts(rows_p, rows_l, tokens, length, pad_id)
    out = sample_jit(lm, params, prefix, prefix_len, ks[:, 0], num_samples=k, max_new_tokens=t, params_s=proposal,
                     stop_tokens=step_stops, pad_id=pad_id, share_prefix=True, limits=jnp.maximum(t - length, 1))
    cand, cand_len = splice(jnp.repeat(tokens, k, axis=0), jnp.repeat(length, k), out.tokens.reshape(r * k, t),
                            out.lengths.reshape(r * k), pad_id)
    cand, cand_len = cand.reshape(b, n * k, t), cand_len.reshape(b, n * k)
    last = jnp.take_along_axis(cand, jnp.maximum(cand_len - 1, 0)[..., None], axis=-1)[..., 0]
    cand_done = jnp.any(last[..., None] == stops, axis=-1) | (cand_len >= t)
    log_phi, _ = potential.score(potential_params, pot_state, cand, cand_len, cand_done, jnp.ones((b, n * k), bool))
    u = jax.vmap(lambda kk: jax.random.uniform(kk, (k,)))(ks[:, 1])  # [R, K]
    ok = jnp.log(u) < log_phi.reshape(r, k)  # accept w.p. exp(log phi)
    ok = ok.at[:, k - 1].set(True)  # the cap: the K-th draw is kept whatever its score
    pick = jnp.argmax(ok, axis=1)  # the first accepted draw
    rows = jnp.arange(r)
    flat = lambda x: x.reshape((r, k) + x.shape[2:])  # noqa: E731
    new_tokens = flat(cand)[rows, pick]
    upto = jnp.arange(k)[None, :] <= pick[:, None]  # the draws a sequential procedure makes
    drawn = jnp.where(upto, out.lengths.reshape(r, k), 0).sum(1)
    read = jnp.where(upto, flat(cand_len), 0).sum(1)
    live = ~done
    prefilled = prefilled + jnp.where(live, rows_l + length, 0)
    scored = scored + jnp.where(live, read, 0)
    tokens = jnp.where(live[:, None], new_tokens, tokens)
    length = jnp.where(live, flat(cand_len)[rows, pick], length)
    logphi = jnp.where(live, flat(log_phi)[rows, pick], logphi)
    steps = steps + live.astype(jnp.int32)
    tries = tries + jnp.where(live, pick + 1, 0)
    decoded = decoded + jnp.where(live, drawn, 0)
    done = done | flat(cand_done)[rows, pick]
    return tokens, length, logphi, steps, tries, done, decoded, s + 1, prefilled, scored

  zeros = jnp.zeros((r,), jnp.int32)
  init = (jnp.full((r, t), pad_id, jnp.int32), zeros, jnp.zeros((r,), jnp.float32), zeros, zeros,
          jnp.zeros((r,), bool), zeros, jnp.zeros((), jnp.int32), zeros, zeros)
  tokens, length, logphi, steps, tries, _, decoded, _, prefilled, scored = jax.lax.while_loop(cond, body, init)
  shape = lambda x: x.reshape((b, n) + x.shape[1:])  # noqa: E731
  return LocalAcceptance(tokens=shape(tokens), length=shape(length), log_potential=shape(logphi), steps=shape(steps),
                         tries=shape(tries), decoded=shape(decoded).sum(axis=1),
                         prefilled=shape(prefilled).sum(axis=1), scored=shape(scored).sum(axis=1))
