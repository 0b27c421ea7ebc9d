"""Twist functions for twisted SMC (Zhao et al. 2024) as a head on a decoder.

A twist model has the `LanguageModel` contract but its output at position t is
log psi(x_{1:t}, x) for every candidate next token x: float32[..., V]. The
twisted proposal is q(x | x_{1:t}) proportional to p(x | x_{1:t}) psi(x_{1:t}, x).
The head starts at zero (psi = 1: the proposal is the base model) and, with
`trunk_params`, the trunk starts from the policy's weights.

The tabular LM (`tts_jax.models.tabular.TabularLM`) is a twist model too: its
table then holds log psi per (prefix, next token). `BoundedTwist` reads any such model's
outputs z as a bounded log psi (the task twists of `tts_jax.train.twist`, which are the
policy's own architecture with the LM head as the twist head).
"""

from __future__ import annotations

import dataclasses
from typing import Any

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


@dataclasses.dataclass(frozen=True)
class BoundedTwist:
  """A twist model from a model `lm` with float[..., V] outputs z (a `LanguageModel`): z read
  as log psi = log(eps + 2 (1 - eps) sigmoid(z)), in [log eps, log 2] and 0 at z = 0. The
  range is about that of the optimal twist E_p[phi | x_{1:t}] of a potential phi in
  [eps, 1 - eps] (e.g. an exact checker, `tts_jax.tasks.step_oracle`), so no noisy update
  can push log psi far past what phi can be. The cache functions are `lm`'s (`prefill`,
  `init_cache`, `decode`, `forward` as in `tts_jax.models.lm.LanguageModel`)."""

  lm: Any
  eps: float = 0.01

  def __post_init__(self):
    if not 0 < self.eps < 0.5:
      raise ValueError(f"BoundedTwist.eps must be in (0, 0.5), got {self.eps!r}")

  @property
  def config(self):
    return self.lm.config

  def log_psi(self, z: jax.Array) -> jax.Array:
    """float32 log psi of raw outputs z (any shape)."""
    return jnp.log(self.eps + 2 * (1 - self.eps) * jax.nn.sigmoid(z.astype(jnp.float32)))

  def forward(self, params, tokens, *args, **kw):
    return self.log_psi(self.lm.forward(params, tokens, *args, **kw))

  def prefill(self, params, tokens, lengths):
    first, prefix = self.lm.prefill(params, tokens, lengths)
    return self.log_psi(first), prefix

  def init_cache(self, *args, **kw):
    return self.lm.init_cache(*args, **kw)

  def decode(self, params, tokens, cache, **kw):
    out, cache = self.lm.decode(params, tokens, cache, **kw)
    return self.log_psi(out), cache
