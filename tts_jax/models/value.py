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


def init_value(config: ModelConfig, seed: int = 0, trunk_params: dict | None = None,
               extra_layers: int = 0) -> tuple[ValueModel, dict]:
  """A value model and its params (a nested dict); with `trunk_params` (a policy's params
  of the same config) the trunk starts from the policy and only the head is fresh.

  extra_layers: decoder blocks stacked on the policy's (config.num_layers + extra_layers in
  all), their output projections (attention o_proj, MLP down_proj) zero so that they start
  as the identity: the value model's trunk is exactly the policy's at step 0. They give a
  value at token t a layer that reads the policy's final state at t - 1, i.e. its prediction
  of token t, which is what checking a step needs."""
  if extra_layers < 0 or int(extra_layers) != extra_layers:
    raise ValueError(f"init_value: extra_layers must be a non-negative integer, got {extra_layers!r}")
  if extra_layers and trunk_params is None:
    raise ValueError("init_value: extra_layers stack blocks on a policy's trunk; pass trunk_params")
  base = config.num_layers
  config = dataclasses.replace(config, num_layers=base + extra_layers)
  graphdef, params = nnx.split(ValueDecoder(config, nnx.Rngs(params=seed)))
  params = nnx.to_pure_dict(params)
  if trunk_params is not None:
    if set(trunk_params["layers"]) != set(range(base)):
      raise ValueError(f"init_value: trunk_params hold layers {sorted(trunk_params['layers'])} but the config "
                       f"has num_layers={base}")
    fresh = {i: params["layers"][i] for i in range(base, base + extra_layers)}
    for block in fresh.values():
      attn, mlp = block["self_attn"], block["mlp"]
      attn["o_proj"] = jax.tree.map(jnp.zeros_like, attn["o_proj"])
      mlp["down_proj"] = jax.tree.map(jnp.zeros_like, mlp["down_proj"])
    params = {**params, **trunk_params, "layers": {**trunk_params["layers"], **fresh}}
  return ValueModel(config=config, graphdef=graphdef), params


@functools.partial(jax.jit, static_argnums=0)
def value_logits(vm: ValueModel, params, tokens, lengths) -> jax.Array:
  """Jitted `vm.values`: int32[B, T], int32[B] -> float32[B, T]."""
  return vm.values(params, tokens, lengths)


def abstract_value(config: ModelConfig) -> tuple[ValueModel, dict]:
  """Like `init_value` but allocates nothing: params are ShapeDtypeStructs (for loading)."""
  graphdef, params = nnx.split(nnx.eval_shape(lambda: ValueDecoder(config, nnx.Rngs(params=0))))
  return ValueModel(config=config, graphdef=graphdef), nnx.to_pure_dict(params)
