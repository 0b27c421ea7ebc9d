"""The particle engine: extend every particle to its next step boundary -> score -> select.

Best-of-N, particle filtering and (later) beam search are this one loop with a
different `select`. Here `select` is SMC resampling when the effective sample
size falls below `ess_threshold` x N (1 = every step, 0 = never, i.e. importance
sampling).

Target: sigma(x) proportional to p(x) phi(x) over complete generations x, with
step potentials phi_s(x_{1:s}) (the last one is phi). A particle's incremental
log-weight at step s is log phi_s - log phi_{s-1} + sum over the step's tokens of
(log p - log q), q being the proposal (`SamplingParams`). The running estimate of
log Z = log E_p[phi(x)] is returned with the particles. Finished particles are
absorbing: never extended, never revived (their copies stay finished).

All prompts of a batch keep their particles apart (resampling happens within
each prompt); the whole loop is one jitted `lax.while_loop` over steps with an
inner `lax.while_loop` over tokens; resampling moves suffix state only
(`cache.gather`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from tts_jax.sampling.logits import SamplingParams, process_logits
from tts_jax.smc.resampling import ess, get_resampler

# potential(tokens int32[B, N, T], lengths int32[B, N], done bool[B, N]) -> log phi float32[B, N]
Potential = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class SMCConfig:
  """num_particles N per prompt; max_new_tokens T; step boundaries at `delimiters` (token
  ids) or after `max_step_tokens` tokens; `stop_tokens` end a particle; resampling by
  `resampler` when ESS < ess_threshold * N; `proposal` is the sampling distribution."""

  num_particles: int = 8
  max_new_tokens: int = 64
  delimiters: tuple[int, ...] = ()
  stop_tokens: tuple[int, ...] = ()
  max_step_tokens: int = 0  # 0: no cap
  resampler: str = "systematic"
  ess_threshold: float = 0.5
  proposal: SamplingParams = SamplingParams()
  pad_id: int = 0


@struct.dataclass
class Particles:
  """N particles for each of B prompts.

  tokens int32[B, N, T]; length int32[B, N]; logp / logq float32[B, N, T] (model / proposal);
  log_weights float32[B, N] since the last resampling; log_potential float32[B, N] (current
  phi_s); log_z float32[B] accumulated at resamplings; done bool[B, N]; steps int32[B, N];
  ancestors int32[B, N] of the last selection; num_resamples int32[B]; t int32[] token
  iterations so far (an RNG counter); logits float32[B, N, V] pending next-token logits;
  cache: the model's cache (compact: each particle writes its own next slot).
  """

  tokens: jax.Array
  length: jax.Array
  logp: jax.Array
  logq: jax.Array
  log_weights: jax.Array
  log_potential: jax.Array
  log_z: jax.Array
  done: jax.Array
  steps: jax.Array
  ancestors: jax.Array
  num_resamples: jax.Array
  t: jax.Array
  logits: jax.Array
  cache: object

  def final_log_z(self) -> jax.Array:
    """log Z_hat float32[B]: the accumulated estimate times the mean current weight."""
    n = self.log_weights.shape[-1]
    return self.log_z + jax.nn.logsumexp(self.log_weights, axis=-1) - jnp.log(n)


def _gather(x, anc):
  return jnp.take_along_axis(x, anc.reshape(anc.shape + (1,) * (x.ndim - 2)), axis=1)


def _extend(lm, params, cfg: SMCConfig, key, p: Particles) -> Particles:
  """Each unfinished particle samples tokens until a step boundary, a stop token or T."""
  b, n, t_max = p.tokens.shape
  delims = jnp.asarray(cfg.delimiters or (-1,), jnp.int32)
  stops = jnp.asarray(cfg.stop_tokens or (-1,), jnp.int32)
  start_len = p.length
  waiting0 = p.done

  def cond(c):
    p, waiting = c
    return ~jnp.all(waiting)

  def body(c):
    p, waiting = c
    active = ~waiting
    logq_all = process_logits(p.logits, temperature=cfg.proposal.temperature, top_k=cfg.proposal.top_k,
                              top_p=cfg.proposal.top_p, min_p=cfg.proposal.min_p)
    k = jax.random.fold_in(key, p.t)
    tok = jax.random.categorical(k, logq_all, axis=-1).astype(jnp.int32)
    tok = jnp.where(active, tok, cfg.pad_id)
    logp_all = jax.nn.log_softmax(p.logits, axis=-1)
    pick = lambda x: jnp.where(active, jnp.take_along_axis(x, tok[..., None], axis=-1)[..., 0], 0.0)
    # Tokens go to each particle's own next position (slot = length), written via a one-hot mask.
    slot = jax.nn.one_hot(p.length, t_max, dtype=bool) & active[..., None]
    tokens = jnp.where(slot, tok[..., None], p.tokens)
    logp = jnp.where(slot, pick(logp_all)[..., None], p.logp)
    logq = jnp.where(slot, pick(logq_all)[..., None], p.logq)
    length = p.length + active.astype(jnp.int32)
    stopped = active & jnp.any(tok[..., None] == stops, axis=-1)
    boundary = active & (jnp.any(tok[..., None] == delims, axis=-1) | (length >= t_max))
    if cfg.max_step_tokens:
      boundary |= active & (length - start_len >= cfg.max_step_tokens)
    done = p.done | stopped | (active & (length >= t_max))
    waiting = waiting | stopped | boundary
    logits, cache = lm.decode(params, tok, p.cache, active=active & ~stopped)
    return p.replace(tokens=tokens, length=length, logp=logp, logq=logq, done=done, t=p.t + 1,
                     logits=jnp.where(active[..., None], logits, p.logits), cache=cache), waiting

  p, _ = jax.lax.while_loop(cond, body, (p, waiting0))
  return p.replace(steps=p.steps + (~waiting0).astype(jnp.int32))


def _select(cfg: SMCConfig, key, p: Particles) -> Particles:
  """Resample (within each prompt) where ESS < threshold * N; carry log Z."""
  b, n = p.log_weights.shape
  resampler = get_resampler(cfg.resampler)
  need = (ess(p.log_weights) < cfg.ess_threshold * n) | (cfg.ess_threshold >= 1.0)  # 1: every step
  keys = jax.random.split(key, b)
  anc = jax.vmap(lambda k, lw: resampler(k, lw, n))(keys, p.log_weights)
  anc = jnp.where(need[:, None], anc, jnp.arange(n)[None, :])
  log_mean = jax.nn.logsumexp(p.log_weights, axis=-1) - jnp.log(n)
  moved = jax.tree.map(lambda x: _gather(x, anc), dict(tokens=p.tokens, length=p.length, logp=p.logp, logq=p.logq,
                                                         log_potential=p.log_potential, done=p.done,
                                                         steps=p.steps, logits=p.logits))
  return p.replace(**moved, cache=p.cache.gather(anc), ancestors=anc,
                   log_weights=jnp.where(need[:, None], 0.0, p.log_weights),
                   log_z=jnp.where(need, p.log_z + log_mean, p.log_z),
                   num_resamples=p.num_resamples + need.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("lm", "cfg", "potential"))
def run_smc(lm, params, prompt_tokens, prompt_lengths, key, *, cfg: SMCConfig, potential: Potential) -> Particles:
  """Sequential Monte Carlo from B prompts (int32[B, Tp] right-padded, int32[B]).

  Returns the final `Particles` (their weights are not resampled after the last step:
  use `final_log_z()` for log Z_hat and `log_weights` for the final importance weights).
  """
  b, n, t_max = prompt_tokens.shape[0], cfg.num_particles, cfg.max_new_tokens
  first, prefix = lm.prefill(params, prompt_tokens, prompt_lengths)
  cache = lm.init_cache(prefix, n, t_max, compact=True)
  zf = jnp.zeros((b, n, t_max), jnp.float32)
  p = Particles(tokens=jnp.full((b, n, t_max), cfg.pad_id, jnp.int32), length=jnp.zeros((b, n), jnp.int32),
                logp=zf, logq=zf, log_weights=jnp.zeros((b, n)), log_potential=jnp.zeros((b, n)),
                log_z=jnp.zeros((b,)), done=jnp.zeros((b, n), bool), steps=jnp.zeros((b, n), jnp.int32),
                ancestors=jnp.broadcast_to(jnp.arange(n), (b, n)), num_resamples=jnp.zeros((b,), jnp.int32),
                t=jnp.zeros((), jnp.int32), logits=jnp.broadcast_to(first[:, None], (b, n, first.shape[-1])),
                cache=cache)

  def cond(c):
    p, _ = c
    return ~jnp.all(p.done)

  def body(c):
    p, s = c
    k_ext, k_sel = jax.random.split(jax.random.fold_in(key, s))
    before = p.length
    p = _extend(lm, params, cfg, k_ext, p)
    new_tok = (jnp.arange(t_max)[None, None] >= before[..., None]) & (jnp.arange(t_max)[None, None] < p.length[..., None])
    log_pq = jnp.sum(jnp.where(new_tok, p.logp - p.logq, 0.0), axis=-1)
    log_phi = potential(p.tokens, p.length, p.done)
    extended = p.length > before
    inc = jnp.where(extended, log_phi - p.log_potential + log_pq, 0.0)
    p = p.replace(log_weights=p.log_weights + inc, log_potential=jnp.where(extended, log_phi, p.log_potential))
    p = jax.lax.cond(jnp.all(p.done), lambda p: p, lambda p: _select(cfg, k_sel, p), p)
    return p, s + 1

  p, _ = jax.lax.while_loop(cond, body, (p, jnp.zeros((), jnp.int32)))
  return p
