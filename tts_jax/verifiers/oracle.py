"""An exact checker as a potential: array code inside the compiled program when the checker
has it (`StepChecker.on_device`), else run on the host through `jax.pure_callback`.

A particle scores r = 1 - eps while its generation is right so far (and, once done,
its answer is), eps otherwise, read as log r or logit r; with `outcome_only` it scores only
finished particles (r = 1, log r = 0, before: the target is p(x) phi(x) with no step
potentials, the setting of twisted SMC, where a learned twist supplies the guidance between
steps). The checker sees the prompt's
token ids and the generation's, so the potential is pure: everything it depends on is
an argument, and one compilation serves every batch.

A corrupted checker (`auc` < 1) models an imperfect verifier of known quality: its score is
r = clip(sigmoid(z), eps, 1 - eps), z = mu (y - 1/2) + e, with y the exact verdict and e a
standard normal that is a pure function of (seed, prompt, generation, done) (a hash: the same
text always gets the same score). Right and wrong texts' logits then differ by mu in mean, so
the ROC AUC of the score against y is Phi(mu / sqrt 2): mu = sqrt 2 Phi^-1(auc).
"""

from __future__ import annotations

import dataclasses
import hashlib
from statistics import NormalDist
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tts_jax.traced import choice_index
from tts_jax.verifiers.transforms import TRANSFORMS, Transform, TracedTransform, check_transform, read_probabilities


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


def checker_noise(seed: int, prompt_ids: Sequence[int], completion_ids: Sequence[int], done: bool) -> float:
  """A standard normal draw that is a pure function of its arguments (blake2b of the ids)."""
  h = hashlib.blake2b(np.asarray([seed, int(done), len(prompt_ids), *prompt_ids, *completion_ids], np.int64).tobytes(),
                      digest_size=8)
  u = (int.from_bytes(h.digest(), "little") + 0.5) / 2.0 ** 64  # in (0, 1)
  return NormalDist().inv_cdf(u)


def corruption_scale(auc: float) -> float:
  """mu such that N(mu/2, 1) against N(-mu/2, 1) has ROC AUC `auc`: sqrt 2 Phi^-1(auc)."""
  if not 0.5 <= auc < 1:
    raise ValueError(f"a corrupted checker's auc must be in [0.5, 1) (1: the exact checker), got {auc!r}")
  return 2 ** 0.5 * NormalDist().inv_cdf(auc)


def check_verifier_auc(method) -> None:
  """Raises ValueError unless `method.verifier_auc` is 1, or in [0.5, 1) with verifier="oracle"."""
  if method.verifier_auc != 1:
    if method.verifier != "oracle":
      raise ValueError(f"{type(method).__name__}.verifier_auc corrupts the exact checker (verifier='oracle'); "
                       f"got verifier={method.verifier!r} with verifier_auc={method.verifier_auc!r}")
    corruption_scale(method.verifier_auc)


def corrupted_scores(ok, noise, auc: float, eps: float = 0.01) -> np.ndarray:
  """float64 probabilities r of exact verdicts `ok` (bool array) with standard normal `noise`
  of the same shape: the exact 1 - eps / eps at auc = 1, else clip(sigmoid(z), eps, 1 - eps)."""
  ok = np.asarray(ok, bool)
  if auc >= 1:
    return np.where(ok, 1 - eps, eps)
  z = corruption_scale(auc) * (ok - 0.5) + np.asarray(noise, np.float64)
  return np.clip(1 / (1 + np.exp(-z)), eps, 1 - eps)


@dataclasses.dataclass(frozen=True)
class OraclePotential(TracedTransform):
  """`checker` as a potential (see the module docstring); params are unused (None)."""

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
    transform = choice_index(self, "transform")  # an int32 tracer in the engine's program
    if on_device is not None and self.auc == 1:  # the exact checker as array code: no callback
      ok = on_device(state.tokens, state.lengths, tokens, lengths, done)
      r = np.asarray([self.eps, 1 - self.eps])
      wrong, right = jnp.asarray([read_probabilities(r, t) for t in range(len(TRANSFORMS))])[transform]
      score = jnp.where(ok, right, wrong)
    else:
      out = jax.ShapeDtypeStruct(lengths.shape, jnp.float32)
      score = jax.pure_callback(self._host, out, state.tokens, state.lengths, tokens, lengths, done,
                                jnp.asarray(transform, jnp.int32))
    return (jnp.where(done, score, 0.0) if self.outcome_only else score), state

  def _host(self, prompt_tokens, prompt_lengths, tokens, lengths, done, transform) -> np.ndarray:
    prompt_tokens, prompt_lengths = np.asarray(prompt_tokens), np.asarray(prompt_lengths)
    tokens, lengths, done = np.asarray(tokens), np.asarray(lengths), np.asarray(done)
    ok = np.zeros(lengths.shape, bool)
    noise = np.zeros(lengths.shape, np.float64)
    for b in range(lengths.shape[0]):
      prompt = prompt_tokens[b, :prompt_lengths[b]].tolist()
      for n in range(lengths.shape[1]):
        completion = tokens[b, n, :lengths[b, n]].tolist()
        ok[b, n] = self.checker(prompt, completion, bool(done[b, n]))
        if self.auc < 1:
          noise[b, n] = checker_noise(self.seed, prompt, completion, bool(done[b, n]))
    return read_probabilities(corrupted_scores(ok, noise, self.auc, self.eps), int(transform))
