"""Value heads on the decoder: outcome (ORM) and process (PRM) reward models.

A `ValueModel` is the decoder trunk plus a linear head giving one logit per
position: sigmoid(logit at position t) estimates the probability that the text
up to and including token t leads to a correct answer. An ORM reads it at the
last token; a PRM at each step delimiter.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from tts_jax.models.config import ModelConfig
from tts_jax.models.lm import LanguageModel
from tts_jax.models.transformer import Decoder, Linear


class ValueDecoder(Decoder):
  """Decoder trunk + value head (H -> 1)."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    super().__init__(config, rngs)
    self.value_head = Linear(config.hidden_size, 1, bias=True, dtype=config.jnp_dtype, rngs=rngs)

  def output(self, h: jax.Array) -> jax.Array:
    """[..., H] -> float32[...] value logits (so `LanguageModel` prefill/decode return values)."""
    return self.value_head(h)[..., 0].astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class ValueModel:
  """Pure value function of (params, tokens). Hashable: a valid jit static arg."""

  config: ModelConfig
  graphdef: nnx.GraphDef

  def values(self, params, tokens: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    """tokens int32[B, T] right-padded -> float32[B, T] value logits (meaningless past lengths)."""
    return self.as_lm().forward(params, tokens, lengths)

  def as_lm(self) -> LanguageModel:
    """The same network under the `LanguageModel` contract: prefill / decode return value
    logits (float32[B] / float32[B, N]) instead of next-token logits, with a KV cache, so
    a PRM scores particles incrementally, one token at a time."""
    return LanguageModel(config=self.config, graphdef=self.graphdef)


def init_value(config: ModelConfig, seed: int = 0, trunk_params: dict | None = None) -> tuple[ValueModel, dict]:
  """A value model and its params (a nested dict); with `trunk_params` (a policy's params
  of the same config) the trunk starts from the policy and only the head is fresh."""
  graphdef, params = nnx.split(ValueDecoder(config, nnx.Rngs(params=seed)))
  params = nnx.to_pure_dict(params)
  if trunk_params is not None:
    params = {**params, **trunk_params}
  return ValueModel(config=config, graphdef=graphdef), params


@functools.partial(jax.jit, static_argnums=0)
def value_logits(vm: ValueModel, params, tokens, lengths) -> jax.Array:
  """Jitted `vm.values`: int32[B, T], int32[B] -> float32[B, T]."""
  return vm.values(params, tokens, lengths)


def abstract_value(config: ModelConfig) -> tuple[ValueModel, dict]:
  """Like `init_value` but allocates nothing: params are ShapeDtypeStructs (for loading)."""
  graphdef, params = nnx.split(nnx.eval_shape(lambda: ValueDecoder(config, nnx.Rngs(params=0))))
  return ValueModel(config=config, graphdef=graphdef), nnx.to_pure_dict(params)
