"""An exact checker run on the host as a potential (through `jax.pure_callback`).

A particle scores r = 1 - eps while its generation is right so far (and, once done,
its answer is), eps otherwise, read as log r or logit r. The checker sees the prompt's
token ids and the generation's, so the potential is pure: everything it depends on is
an argument, and one compilation serves every batch.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


class StepChecker(Protocol):
  """Hashable host function: is this (partial) generation right so far?"""

  def __call__(self, prompt_ids: Sequence[int], completion_ids: Sequence[int], done: bool) -> bool: ...


@struct.dataclass
class PromptState:
  """The prompts the checker reads: tokens int32[B, Tp], lengths int32[B]. Per prompt, so
  resampling (which moves particles within a prompt) leaves it unchanged."""

  tokens: jax.Array
  lengths: jax.Array

  def gather(self, ancestors: jax.Array) -> "PromptState":
    return self


@dataclasses.dataclass(frozen=True)
class OraclePotential:
  """`checker` as a potential (see the module docstring); params are unused (None)."""

  checker: StepChecker
  transform: Literal["log", "logit"] = "log"
  eps: float = 0.01

  def __post_init__(self):
    if self.transform not in ("log", "logit"):
      raise ValueError(f"transform must be 'log' or 'logit', got {self.transform!r}")
    if not 0 < self.eps < 0.5:
      raise ValueError(f"eps must be in (0, 0.5), got {self.eps}")

  def init(self, params, prompt_tokens, prompt_lengths, num_particles: int, max_new_tokens: int) -> PromptState:
    return PromptState(tokens=prompt_tokens.astype(jnp.int32), lengths=prompt_lengths.astype(jnp.int32))

  def advance(self, params, tokens, state, active):
    return state

  def score(self, params, state: PromptState, tokens, lengths, done, extended):
    out = jax.ShapeDtypeStruct(lengths.shape, jnp.float32)
    return jax.pure_callback(self._host, out, state.tokens, state.lengths, tokens, lengths, done), state

  def _host(self, prompt_tokens, prompt_lengths, tokens, lengths, done) -> np.ndarray:
    prompt_tokens, prompt_lengths = np.asarray(prompt_tokens), np.asarray(prompt_lengths)
    tokens, lengths, done = np.asarray(tokens), np.asarray(lengths), np.asarray(done)
    ok = np.zeros(lengths.shape, bool)
    for b in range(lengths.shape[0]):
      prompt = prompt_tokens[b, :prompt_lengths[b]].tolist()
      for n in range(lengths.shape[1]):
        ok[b, n] = self.checker(prompt, tokens[b, n, :lengths[b, n]].tolist(), bool(done[b, n]))
    r = np.where(ok, 1 - self.eps, self.eps)
    return (np.log(r) if self.transform == "log" else np.log(r / (1 - r))).astype(np.float32)
