"""One token for every sample: the step the sampler's loop and the particle engine share.

    d = draw_tokens(logits, keys, active, proposal=SamplingParams(temperature=0.7),
                    stop_tokens=(eos,), pad_id=pad)

Each active sample draws its next token from the proposal q (the model's logits after
temperature / top-k / top-p / min-p, optionally times a twist psi: q proportional to
p' psi), and the step reports the token's log-probability under the model p and under
q. Inactive samples get `pad_id` and zero log-probs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from tts_jax.sampling.logits import SamplingParams, process_logits


@struct.dataclass
class TokenDraw:
  """What one token step gives (B prompts x N samples).

  tokens: int32[B, N] (pad_id where inactive); logp / logq: float32[B, N] the token's
  log-prob under the model (temperature 1, no filtering) / under the proposal (0 where
  inactive); model_logprobs: float32[B, N, V] the model's full next-token log-probs;
  stopped: bool[B, N] active samples that drew a stop token.
  """

  tokens: jax.Array
  logp: jax.Array
  logq: jax.Array
  model_logprobs: jax.Array
  stopped: jax.Array


def _gumbel_max(key: jax.Array, logits: jax.Array) -> jax.Array:
  """`jax.random.categorical(key, logits, axis=-1)`, the same draws bit for bit, with the
  Gumbel noise materialised before the argmax: fused into the argmax's reduction (what XLA
  does with the one-liner) the threefry bits are computed in an unvectorised loop, ~1.6x
  slower on CPU. On accelerators the fused form is kept (it never writes the [..., V] noise
  to memory)."""
  noise = jax.random.gumbel(key, logits.shape, logits.dtype)
  if jax.default_backend() == "cpu":
    return first_argmax(jax.lax.optimization_barrier(noise) + logits)
  return jnp.argmax(noise + logits, axis=-1)


def first_argmax(x: jax.Array) -> jax.Array:
  """`jnp.argmax(x, axis=-1)` (the first index of the largest value; a NaN counts as the
  largest) as two plain reductions, a max and a min of indices: XLA:CPU runs argmax's
  (value, index) reduction unvectorised, ~3 ms for [16, 16384] against ~0.5 ms for these.
  x: float[..., V] -> int32[...]."""
  top = jnp.max(x, axis=-1, keepdims=True)
  hit = (x == top) | jnp.isnan(x)
  return jnp.min(jnp.where(hit, jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape[-1]), axis=-1)


def _categorical(keys: jax.Array, logq: jax.Array) -> jax.Array:
  if keys.ndim == 1:  # one key per prompt: its N samples are drawn together
    return jax.vmap(_gumbel_max)(keys, logq)
  return jax.vmap(jax.vmap(_gumbel_max))(keys, logq)  # one key per sample


def draw_tokens(logits: jax.Array, keys: jax.Array, active: jax.Array, *, proposal: SamplingParams,
                stop_tokens: tuple[int, ...], pad_id: int, log_twist: jax.Array | None = None,
                forced: tuple[jax.Array, jax.Array] | None = None) -> TokenDraw:
  """Draws one token per sample.

  Args:
    logits: float32[B, N, V] the model's next-token logits.
    keys: PRNG keys [B] (one per prompt; categorical over its [N, V]) or [B, N] (one per sample).
    active: bool[B, N]; inactive samples draw nothing.
    proposal: the sampling distribution (temperature 0 is greedy: the first argmax).
    stop_tokens: ids that end a sample.
    pad_id: the token of inactive samples.
    log_twist: float32[B, N, V] optional log psi of each next token (twisted proposal).
    forced: optional (mask bool[B, N], tokens int32[B, N]): where mask, the token is forced
      (conditional SMC's reference particle); its log-probs are still those of p and q.

  Returns:
    A `TokenDraw`.
  """
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  if proposal == SamplingParams():  # the proposal is the model itself: one log-softmax serves both
    logq_all = logp_all
  else:
    logq_all = process_logits(logits, temperature=proposal.temperature, top_k=proposal.top_k,
                              top_p=proposal.top_p, min_p=proposal.min_p)
  if log_twist is not None:
    logq_all = jax.nn.log_softmax(logq_all + log_twist, axis=-1)
  if proposal.temperature == 0:  # greedy (a twist cannot move a one-hot proposal)
    tok = jnp.argmax(logq_all, axis=-1).astype(jnp.int32)
  else:
    tok = _categorical(keys, logq_all).astype(jnp.int32)
  if forced is not None:
    tok = jnp.where(forced[0], forced[1], tok)
  tok = jnp.where(active, tok, pad_id)
  pick = lambda x: jnp.where(active, jnp.take_along_axis(x, tok[..., None], axis=-1)[..., 0], 0.0)
  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)
  stopped = active & jnp.any(tok[..., None] == stops, axis=-1)
  return TokenDraw(tokens=tok, logp=pick(logp_all), logq=pick(logq_all), model_logprobs=logp_all, stopped=stopped)
