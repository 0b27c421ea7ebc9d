"""Reward models of the papers, on the decoder trunk: one value logit per position.

Every head below returns a logit v per position so that sigmoid(v) is the model's
probability that the text so far is correct (what `ValueModel` and the potentials read):

- "two_layer": Qwen2.5-Math-PRM (Qwen2 trunk; score = Linear(H, H) -> ReLU -> Linear(H, 2),
  a 2-class softmax at each step-separator token): v = s[1] - s[0].
- "linear": a value head Linear(H, 1) (Skywork-o1-Open-PRM's `v_head.summary`, and this
  project's own ORM/PRM heads): v = the head's output.
- "tokens": a causal LM read as a PRM by p("+") against p("-") at a step tag (Math-Shepherd
  on Mistral, RLHFlow's Llama-3.1-8B-PRM): v = logit("+") - logit("-"), the log-odds of the
  softmax restricted to the two tokens.
- "seqcls": `*ForSequenceClassification` ORMs: score = Linear(H, labels, no bias); v = the
  score with one label, s[1] - s[0] with two.

    vm, params, tokenizer = load_reward_model("path/to/Qwen2.5-Math-PRM-7B")
    values = vm.values(params, tokens, lengths)       # float32[B, T] logits
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from tts_jax.models.config import ModelConfig
from tts_jax.models.transformer import Decoder, Linear

HeadKind = Literal["two_layer", "linear", "tokens", "seqcls"]


@dataclasses.dataclass(frozen=True)
class RewardHead:
  """Which head reads the trunk. good / bad: the token ids of "+" / "-" ("tokens");
  labels: the classifier's outputs ("seqcls", 1 or 2); bias: the linear head's bias."""

  kind: HeadKind
  good: int = -1
  bad: int = -1
  labels: int = 1
  bias: bool = True

  def __post_init__(self):
    if self.kind not in ("two_layer", "linear", "tokens", "seqcls"):
      raise ValueError(f"unknown reward head {self.kind!r}; use 'two_layer', 'linear', 'tokens' or 'seqcls'")
    if self.kind == "tokens" and (self.good < 0 or self.bad < 0 or self.good == self.bad):
      raise ValueError(f"a 'tokens' head needs two different token ids good/bad, got {self.good}, {self.bad}")
    if self.kind == "seqcls" and self.labels not in (1, 2):
      raise ValueError(f"a sequence classifier with {self.labels} labels is not a reward model (1 or 2)")


class RewardDecoder(Decoder):
  """Decoder trunk + a `RewardHead`. Heads other than "tokens" read no LM head: their
  configs are built with tie_word_embeddings=True so none is allocated."""

  def __init__(self, config: ModelConfig, head: RewardHead, rngs: nnx.Rngs):
    super().__init__(config, rngs)
    self.head_spec = head
    h, dt = config.hidden_size, config.jnp_dtype
    if head.kind == "two_layer":
      self.score_0 = Linear(h, h, bias=True, dtype=dt, rngs=rngs)
      self.score_2 = Linear(h, 2, bias=True, dtype=dt, rngs=rngs)
    elif head.kind == "linear":
      self.value_head = Linear(h, 1, bias=head.bias, dtype=dt, rngs=rngs)
    elif head.kind == "seqcls":
      self.score = Linear(h, head.labels, bias=False, dtype=dt, rngs=rngs)

  def output(self, h: jax.Array) -> jax.Array:
    """[..., H] -> float32[...] value logits."""
    kind = self.head_spec.kind
    if kind == "two_layer":
      s = self.score_2(jax.nn.relu(self.score_0(h))).astype(jnp.float32)
      return s[..., 1] - s[..., 0]
    if kind == "linear":
      return self.value_head(h)[..., 0].astype(jnp.float32)
    if kind == "seqcls":
      s = self.score(h).astype(jnp.float32)
      return s[..., 0] if s.shape[-1] == 1 else s[..., 1] - s[..., 0]
    w = self.embed_tokens[...] if self.lm_head is None else self.lm_head[...]  # [V, H]
    col = w[self.head_spec.good] - w[self.head_spec.bad]
    return jnp.matmul(h, col, preferred_element_type=jnp.float32)


def reward_config(config: ModelConfig, head: RewardHead) -> ModelConfig:
  """The trunk config a head is built on (no LM head unless the head reads it)."""
  return config if head.kind == "tokens" else dataclasses.replace(config, tie_word_embeddings=True)


def init_reward(config: ModelConfig, head: RewardHead, seed: int = 0):
  """A randomly initialised reward model: (ValueModel, params)."""
  from tts_jax.models.value import ValueModel  # noqa: PLC0415 (value imports transformer too; no cycle)
  config = reward_config(config, head)
  graphdef, params = nnx.split(RewardDecoder(config, head, nnx.Rngs(params=seed)))
  return ValueModel(config=config, graphdef=graphdef), nnx.to_pure_dict(params)


def abstract_reward(config: ModelConfig, head: RewardHead):
  """Like `init_reward` but allocates nothing (params are ShapeDtypeStructs, for loading)."""
  from tts_jax.models.value import ValueModel  # noqa: PLC0415
  config = reward_config(config, head)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: RewardDecoder(config, head, nnx.Rngs(params=0))))
  return ValueModel(config=config, graphdef=graphdef), nnx.to_pure_dict(params)
