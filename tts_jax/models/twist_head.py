"""Twist functions for twisted SMC (Zhao et al. 2024) as a head on a decoder.

A twist model has the `LanguageModel` contract but its output at position t is
log psi(x_{1:t}, x) for every candidate next token x: float32[..., V]. The
twisted proposal is q(x | x_{1:t}) proportional to p(x | x_{1:t}) psi(x_{1:t}, x).
The head starts at zero (psi = 1: the proposal is the base model) and, with
`trunk_params`, the trunk starts from the policy's weights.

The tabular LM (`tts_jax.models.tabular.TabularLM`) is a twist model too: its
table then holds log psi per (prefix, next token).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from tts_jax.models.config import ModelConfig
from tts_jax.models.lm import LanguageModel
from tts_jax.models.transformer import Decoder, Linear


class TwistDecoder(Decoder):
  """Decoder trunk + twist head (H -> V), zero-initialised."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    super().__init__(config, rngs)
    self.twist_head = Linear(config.hidden_size, config.vocab_size, bias=True, dtype=jnp.float32, rngs=rngs)
    self.twist_head.kernel[...] = jnp.zeros_like(self.twist_head.kernel[...])

  def output(self, h: jax.Array) -> jax.Array:
    """[..., H] -> float32[..., V]: log psi of each next token."""
    return self.twist_head(h.astype(jnp.float32))


def init_twist(config: ModelConfig, seed: int = 0, trunk_params: dict | None = None) -> tuple[LanguageModel, dict]:
  """A twist model (LanguageModel whose outputs are log-twists) and its params."""
  graphdef, params = nnx.split(TwistDecoder(config, nnx.Rngs(params=seed)))
  params = nnx.to_pure_dict(params)
  if trunk_params is not None:
    params = {**params, **{k: v for k, v in trunk_params.items() if k != "lm_head"}}
  return LanguageModel(config=config, graphdef=graphdef), params
