"""Logits processing: temperature, top-k, top-p (nucleus) and min-p, as a pure function.

The filters are applied in the order `transformers` applies its logits warpers
(temperature, top-k, top-p, min-p) with the same arithmetic, so the sampling
distribution equals Hugging Face's. One documented difference: when several
tokens tie exactly at a top-p cut-off, all of them are kept (Hugging Face keeps
an arbitrary subset that depends on its sort order).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How the next token is drawn; hashable, so a static argument of jit.

  Attributes:
    temperature: >= 0; 0 is greedy (argmax, first index on ties).
    top_k: keep the k most likely tokens (and ties with the k-th); 0 disables.
    top_p: keep the smallest most-likely set with mass >= top_p; in (0, 1]; 1 disables.
    min_p: drop tokens with prob < min_p * max prob; in [0, 1]; 0 disables.
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0

  def __post_init__(self):
    validate(self.temperature, self.top_k, self.top_p, self.min_p)


MIN_TEMPERATURE = 1e-4  # below it logits / T reaches float32's range: use 0 (greedy)


def validate(temperature, top_k, top_p, min_p) -> None:
  """Raises ValueError naming the first invalid sampling parameter."""
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
    raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
  if 0 < temperature < MIN_TEMPERATURE or temperature == float("inf"):
    raise ValueError(f"temperature {temperature!r} is outside [{MIN_TEMPERATURE}, inf) (logits / T overflows "
                     f"float32); use 0 for greedy decoding")
  if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
    raise ValueError(f"top_k must be an int >= 0 (0 disables), got {top_k!r}")
  if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
  if not isinstance(min_p, (int, float)) or not 0 <= min_p <= 1:
    raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")


def _top_k(scores, k):
  k = min(k, scores.shape[-1])
  kth = jax.lax.top_k(scores, k)[0][..., -1:]
  return jnp.where(scores < kth, -jnp.inf, scores)


def _top_p(scores, p):
  ascending = jnp.sort(scores, axis=-1)
  cum = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
  removed = cum <= 1 - p
  removed = removed.at[..., -1].set(False)  # always keep the most likely token
  cut = jnp.sum(removed, axis=-1, keepdims=True)  # removed tokens form a prefix
  threshold = jnp.take_along_axis(ascending, cut, axis=-1)
  return jnp.where(scores < threshold, -jnp.inf, scores)


def _min_p(scores, min_p):
  probs = jax.nn.softmax(scores, axis=-1)
  top = jnp.max(probs, axis=-1, keepdims=True)
  return jnp.where(probs < min_p * top, -jnp.inf, scores)


def process_logits(logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0, min_p: float = 0.0) -> jax.Array:
  """Log-probabilities of the sampling distribution.

  Args:
    logits: float[..., V] raw model logits.
    temperature: >= 0; 0 gives the greedy one-hot (first argmax).
    top_k: int >= 0; 0 disables.
    top_p: in (0, 1]; 1 disables.
    min_p: in [0, 1]; 0 disables.

  Returns:
    float32[..., V] log-probs of the proposal; -inf at removed tokens.
  """
  validate(temperature, top_k, top_p, min_p)
  scores = logits.astype(jnp.float32)
  if temperature == 0:
    best = jnp.argmax(scores, axis=-1)
    return jnp.where(jnp.arange(scores.shape[-1]) == best[..., None], 0.0, -jnp.inf)
  if temperature != 1:
    scores = scores / temperature
  if top_k:
    scores = _top_k(scores, top_k)
  if top_p < 1:
    scores = _top_p(scores, top_p)
  if min_p > 0:
    scores = _min_p(scores, min_p)
  return jax.nn.log_softmax(scores, axis=-1)
