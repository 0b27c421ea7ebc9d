"""An exact checker as a potential: array code inside the compiled program when the checker
has it (`StepChecker.on_device`), else run on the host through `jax.pure_callback`.

A particle scores r = 1 - eps while its generation is right so far (and, once done,
its answer is), eps otherwise, read as log r or logit r; with `outcome_only` it scores only
finished particles (r = 1, log r = 0, before: the target is p(x) phi(x) with no step
potentials, the setting of twisted SMC, where a learned twist supplies the guidance between
steps). The checker sees the prompt's
token ids and the generation's, so the potential is pure: everything it depends on is
an argument, and one compilation serves every batch.

A corrupted checker (`auc` < 1) models an imperfect verifier of known quality
(`tts_jax.verifiers.corruption`): its verdict, from the host or the device checker, is
corrupted inside the program, by noise that is a pure function of the text. `transform`,
`auc` and `seed` are traced (`tts_jax.traced`): runs that differ only in them share one
compiled program.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tts_jax.traced import choice_index
from tts_jax.verifiers.base import host_input
from tts_jax.verifiers.corruption import checker_noise, corrupted_logits, corruption_scale
from tts_jax.verifiers.transforms import TRANSFORMS, Transform, TracedTransform, check_transform, read_logits, \
    read_probabilities


class StepChecker(Protocol):
  """Hashable host function: is this (partial) generation right so far? Optionally
  `on_device()`: the same verdicts as array code, `(prompt_tokens int32[B, Tp], prompt_lengths
  int32[B], tokens int32[B, N, T], lengths int32[B, N], done bool[B, N]) -> bool[B, N]`, or None;
  the exact potential then runs inside the compiled program (no host callback)."""

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
class OraclePotential(TracedTransform):
  """`checker` as a potential (see the module docstring); params are unused (None)."""

  traced: ClassVar[tuple[str, ...]] = ("transform", "auc", "seed")

  checker: StepChecker
  transform: Transform = "log"
  eps: float = 0.01
  auc: float = 1.0  # < 1: the checker corrupted to this ROC AUC (module docstring)
  seed: int = 0  # of the corruption noise
  outcome_only: bool = False  # score only finished particles (log 0 / logit 0 before)

  def __post_init__(self):
    check_transform(self.transform)
    if not 0 < self.eps < 0.5:
      raise ValueError(f"eps must be in (0, 0.5), got {self.eps}")
    if self.auc != 1:
      corruption_scale(self.auc)  # raises on an auc outside [0.5, 1]

  def init(self, params, prompt_tokens, prompt_lengths, num_particles: int, max_new_tokens: int) -> PromptState:
    return PromptState(tokens=prompt_tokens.astype(jnp.int32), lengths=prompt_lengths.astype(jnp.int32))

  def advance(self, params, tokens, state, active):
    return state

  def score(self, params, state: PromptState, tokens, lengths, done, extended):
    on_device = getattr(self.checker, "on_device", lambda: None)()
    if on_device is not None:  # the checker as array code: no callback
      ok = on_device(state.tokens, state.lengths, tokens, lengths, done)
    elif (fed := host_input(self, "score")) is not None:  # from `host_score`: the engine runs from the host
      ok = fed
    else:
      ok = jax.pure_callback(self._verdicts, jax.ShapeDtypeStruct(lengths.shape, jnp.bool_), state.tokens,
                             state.lengths, tokens, lengths, done)
    transform = choice_index(self, "transform")  # an int32 tracer in the engine's program
    r = np.asarray([self.eps, 1 - self.eps])
    wrong, right = jnp.asarray([read_probabilities(r, t) for t in range(len(TRANSFORMS))])[transform]
    score = jnp.where(ok, right, wrong)
    if not (isinstance(self.auc, (int, float)) and self.auc >= 1):  # corrupted, or the auc is traced
      noise = checker_noise(self.seed, state.tokens, state.lengths, tokens, lengths, done, xp=jnp)
      corrupted = read_logits(corrupted_logits(ok, noise, self.auc, self.eps), transform)
      score = jnp.where(self.auc < 1, corrupted, score)
    return (jnp.where(done, score, 0.0) if self.outcome_only else score), state

  def needs_host(self) -> bool:
    """A checker without array code runs on the host (`tts_jax.verifiers.base`)."""
    return getattr(self.checker, "on_device", lambda: None)() is None

  def host_init(self, prompt_tokens, prompt_lengths):
    return None

  def host_score(self, prompt_tokens, prompt_lengths, tokens, lengths, done, extended, capacity: int):
    """The checker's verdicts bool[B, N], on the host."""
    return self._verdicts(prompt_tokens, prompt_lengths, tokens, lengths, done)

  def _verdicts(self, prompt_tokens, prompt_lengths, tokens, lengths, done) -> np.ndarray:
    """The host checker's verdicts bool[B, N] (the callback's side)."""
    prompt_tokens, prompt_lengths = np.asarray(prompt_tokens), np.asarray(prompt_lengths)
    tokens, lengths, done = np.asarray(tokens), np.asarray(lengths), np.asarray(done)
    ok = np.zeros(lengths.shape, bool)
    for b in range(lengths.shape[0]):
      prompt = prompt_tokens[b, :prompt_lengths[b]].tolist()
      for n in range(lengths.shape[1]):
        ok[b, n] = self.checker(prompt, tokens[b, n, :lengths[b, n]].tolist(), bool(done[b, n]))
    return ok
