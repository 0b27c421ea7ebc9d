"""Potentials: stateless functions of the tokens, and value models scored incrementally.

`SequencePotential` wraps a stateless function of the generated tokens (oracles,
tabular potentials). `ValuePotential` runs a value model (a PRM / ORM) token by token
alongside the policy with its own KV cache, so scoring a step costs the step's tokens
only; it never re-reads the prefix as text. See `tts_jax.verifiers.base` for the protocol.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import struct

from tts_jax.models import CausalLM
from tts_jax.verifiers.base import PotentialFn
from tts_jax.verifiers.steps import accumulate_step
from tts_jax.verifiers.transforms import Transform, TracedTransform, check_transform, read_logits


@dataclasses.dataclass(frozen=True)
class SequencePotential:
  """log phi = fn(tokens, lengths, done) of the generated tokens; no state."""

  fn: PotentialFn

  def init(self, params, prompt_tokens, prompt_lengths, num_particles: int, max_new_tokens: int):
    return ()

  def advance(self, params, tokens, state, active):
    return state

  def score(self, params, state, tokens, lengths, done, extended):
    return self.fn(tokens, lengths, done).astype(jnp.float32), state


@struct.dataclass
class ValueState:
  """cache: the value model's KV cache; last float32[B, N]: value logit at each particle's
  last token; agg float32[B, N]: the aggregated log-score; scored int32[B, N]: steps scored."""

  cache: object
  last: jax.Array
  agg: jax.Array
  scored: jax.Array

  def gather(self, ancestors):
    take = lambda x: jnp.take_along_axis(x, ancestors, axis=1)
    return ValueState(cache=self.cache.gather(ancestors), last=take(self.last), agg=take(self.agg),
                      scored=take(self.scored))


@dataclasses.dataclass(frozen=True)
class ValuePotential(TracedTransform):
  """A PRM/ORM value model as a potential, scored incrementally.

  At each step end the value logit v at the step's last token (the delimiter, or the final
  token) gives a step score r = sigmoid(v), read as log r (`transform="log"`, a probability
  potential) or logit r = v (`"logit"`, as in Puri et al. 2025). Steps combine by
  `aggregate`: "last" (the latest step's score), "prod" (sum of log-scores) or "min".

  model: a `LanguageModel` whose outputs are value logits (`ValueModel.as_lm()`).
  """

  model: CausalLM
  aggregate: Literal["last", "prod", "min"] = "last"
  transform: Transform = "log"

  def __post_init__(self):
    if self.aggregate not in ("last", "prod", "min"):
      raise ValueError(f"aggregate must be 'last', 'prod' or 'min', got {self.aggregate!r}")
    check_transform(self.transform)

  def init(self, params, prompt_tokens, prompt_lengths, num_particles: int, max_new_tokens: int) -> ValueState:
    last, prefix = self.model.prefill(params, prompt_tokens, prompt_lengths)
    cache = self.model.init_cache(prefix, num_particles, max_new_tokens, compact=True)
    shape = (prompt_tokens.shape[0], num_particles)
    return ValueState(cache=cache, last=jnp.broadcast_to(last[:, None], shape).astype(jnp.float32),
                      agg=jnp.zeros(shape, jnp.float32), scored=jnp.zeros(shape, jnp.int32))

  def grow(self, state: ValueState, capacity: int) -> ValueState:
    """The state with the value model's KV cache enlarged to `capacity` suffix slots (the
    engine's `cache_schedule`: `init` then gets the first capacity as max_new_tokens)."""
    return state.replace(cache=state.cache.grow(capacity))

  def advance(self, params, tokens, state: ValueState, active) -> ValueState:
    v, cache = self.model.decode(params, tokens, state.cache, active=active)
    return state.replace(cache=cache, last=jnp.where(active, v, state.last))

  def score(self, params, state: ValueState, tokens, lengths, done, extended):
    r = read_logits(state.last, self.transform)
    agg = jnp.where(extended, accumulate_step(self.aggregate, state.agg, r, state.scored), state.agg)
    return agg, state.replace(agg=agg, scored=state.scored + extended.astype(jnp.int32))


@struct.dataclass
class OutcomeState:
  """The prompts' KV (`PrefixCache`) and the value logit float32[B] at each prompt's last token."""

  prefix: object
  first: jax.Array

  def gather(self, ancestors):
    return self  # per prompt: resampling particles within a prompt leaves it unchanged


@dataclasses.dataclass(frozen=True)
class OutcomePotential(TracedTransform):
  """A value model (an ORM) scored on whole sequences: log phi = log sigmoid(v) (`"log"`) or
  v (`"logit"`) of the value logit v at each completion's last token (the prompt's last token
  for an empty completion). `init` prefills the prompts once; `score` runs the completions on
  top of that KV (`extend`), so completions may change anywhere between calls (MCMC moves,
  `tts_jax.mcmc`); `ValuePotential` is the incremental form for growing particles.

  model: a `LanguageModel` whose outputs are value logits (`ValueModel.as_lm()`).
  """

  model: CausalLM
  transform: Transform = "log"

  def __post_init__(self):
    check_transform(self.transform)

  def init(self, params, prompt_tokens, prompt_lengths, num_particles: int, max_new_tokens: int) -> OutcomeState:
    first, prefix = self.model.prefill(params, prompt_tokens, prompt_lengths)
    return OutcomeState(prefix=prefix, first=first.astype(jnp.float32))

  def advance(self, params, tokens, state, active):
    return state

  def score(self, params, state: OutcomeState, tokens, lengths, done, extended):
    """tokens int32[B, N, T], lengths int32[B, N] -> (float32[B, N], state)."""
    values = self.model.extend(params, state.prefix, tokens, lengths).astype(jnp.float32)  # [B, N, T]
    last = jnp.take_along_axis(values, jnp.maximum(lengths - 1, 0)[..., None], axis=-1)[..., 0]
    v = jnp.where(lengths > 0, last, state.first[:, None])
    return read_logits(v, self.transform), state


def as_potential(potential):
  """A potential object, wrapping a bare function in `SequencePotential`."""
  if all(hasattr(potential, m) for m in ("init", "advance", "score")):
    return potential
  if callable(potential):
    return SequencePotential(potential)
  raise TypeError(f"a potential needs init/advance/score methods or must be callable, got {type(potential)}")
