"""A process reward model that reads its own format inside the engines: step tags.

PRMs such as Qwen2.5-Math-PRM (`<extra_0>` after each step, its own chat prompt) and
Math-Shepherd (` ки`) were trained on text laid out their way, not on the policy's tokens.
`StepTagPotential` scores a particle the way such a PRM was trained: at each score, a host
`reader` turns the particle's tokens into the PRM's ids (the completion's text, its steps
re-tokenized by the PRM's tokenizer, each followed by the tag), and the PRM reads them on
top of its own prompt (prefilled once per prompt in `init`); a step's score is the PRM's
value at its tag. The result is the score pool scoring gives the same text
(`tts_jax.eval.group`), by construction: both go through the same `StepTagFormat`.

Every score re-reads the completion so far (the re-tokenized text can differ from the
policy's tokens anywhere, so there is no KV to extend): a run costs the PRM about
(steps + 1) / 2 times the tokens of the incremental `ValuePotential`, as Hugging Face's
search-and-learn pays when it re-scores each beam's text. The state counts the ids read
(`read`, discarded particles included), which the engine reports as `Particles.verified`.

    reader = StepTagReader(task, StepTagFormat.qwen_math_prm(), prm_tokenizer)
    pot = StepTagPotential(prm.as_lm(), reader, aggregate="last", transform="logit")
    run_smc(..., potential=pot, potential_params=prm_params)

A reader has `prompt(policy prompt ids) -> ids`, `completion(policy prompt ids, policy
completion ids, done) -> (ids, read mask)` (where the steps' scores are read: the tags, or,
for RLHFlow's conversation format, the token before each "+"), `max_ids(num_tokens,
max_steps)` (a bound on a completion's ids) and `prompt_margin()` (how many more ids the
PRM's prompt may take than the policy's), e.g. `tts_jax.tasks.math.StepTagReader`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tts_jax.models import CausalLM
from tts_jax.models.memory import REREAD_TOKENS
from tts_jax.verifiers.base import host_input
from tts_jax.verifiers.transforms import Transform, TracedTransform, check_transform, read_logits


@struct.dataclass
class StepTagState:
  """prefix: the PRM prompts' KV (`PrefixCache`, B prompts); prompt_tokens int32[B, Tp] and
  prompt_lengths int32[B]: the policy's prompts (the reader's key to each problem); read
  int32[B]: PRM ids read so far (prompts, and every re-read of a particle that grew);
  capacity: an empty array of shape [0, C] whose shape says the longest particle of the
  current engine loop (C tokens: the reader bounds a re-read's ids from it). Per prompt:
  particles moving leave it unchanged."""

  prefix: object
  prompt_tokens: jax.Array
  prompt_lengths: jax.Array
  read: jax.Array
  capacity: jax.Array

  def gather(self, ancestors):
    return self


@dataclasses.dataclass(frozen=True)
class StepTagPotential(TracedTransform):
  """A step-tag PRM as a potential (module docstring). A step score r = sigmoid(v) of the
  value logit v at a tag is read as log r (`transform="log"`) or v (`"logit"`); a
  particle's score combines its steps' by `aggregate`: "last", "prod" (sum of the read
  scores) or "min". max_tokens: the PRM ids one particle may take (0: the reader's
  bound `max_ids(C, max_steps)` for C the engine's current cache capacity, at most the T
  generated tokens, in at most `max_steps` steps); a longer one stops the run with an error
  that says so. Each score reads the narrowest of the widths 256, 1024, 4096, ... (up to that
  bound) that holds the longest re-read, so a step costs about its particles' current
  length, not the bound (compiled programs hold the widest's buffers: keep the bound tight).
  tokens_per_read: the particles are read in chunks of at most this many ids (at least one
  particle per prompt), so a read's activations stay bounded at any N."""

  model: CausalLM
  reader: object
  aggregate: Literal["last", "prod", "min"] = "last"
  transform: Transform = "log"
  max_tokens: int = 0
  max_steps: int = 64
  tokens_per_read: int = REREAD_TOKENS

  def __post_init__(self):
    if self.aggregate not in ("last", "prod", "min"):
      raise ValueError(f"aggregate must be 'last', 'prod' or 'min', got {self.aggregate!r}")
    check_transform(self.transform)
    if self.max_tokens < 0:
      raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
    if self.max_steps < 1:
      raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
    if self.tokens_per_read < 1:
      raise ValueError(f"tokens_per_read must be >= 1, got {self.tokens_per_read}")

  def init(self, params, prompt_tokens, prompt_lengths, num_particles: int, max_new_tokens: int) -> StepTagState:
    """prompt_tokens int32[B, Tp] (the policy's) -> the PRM's prompts prefilled."""
    b, width = prompt_tokens.shape[0], prompt_tokens.shape[1] + self.reader.prompt_margin()
    out = (jax.ShapeDtypeStruct((b, width), jnp.int32), jax.ShapeDtypeStruct((b,), jnp.int32))
    fed = host_input(self, "init")  # from `host_init` when the engine runs from the host
    ids, lengths = fed if fed is not None else jax.pure_callback(self._prompts, out, prompt_tokens, prompt_lengths)
    _, prefix = self.model.prefill(params, ids, lengths)
    return StepTagState(prefix=prefix, prompt_tokens=prompt_tokens.astype(jnp.int32),
                        prompt_lengths=prompt_lengths.astype(jnp.int32), read=lengths,
                        capacity=jnp.zeros((0, max_new_tokens), jnp.int8))

  def grow(self, state: StepTagState, capacity: int) -> StepTagState:
    """The engine's caches grew to `capacity`: a re-read may take `reader.max_ids(capacity, max_steps)` ids."""
    return state.replace(capacity=jnp.zeros((0, capacity), jnp.int8))

  def advance(self, params, tokens, state, active):
    return state

  def score(self, params, state: StepTagState, tokens, lengths, done, extended):
    """tokens int32[B, N, T], lengths int32[B, N] -> (log phi float32[B, N], state); the
    particles not `extended` are not read (the engine keeps their previous score)."""
    b, n, t = tokens.shape
    width = self._width(t, state.capacity.shape[1])
    out = (jax.ShapeDtypeStruct((b, n, width), jnp.int32), jax.ShapeDtypeStruct((b, n, width), jnp.bool_),
           jax.ShapeDtypeStruct((b, n), jnp.int32))
    fed = host_input(self, "score")  # from `host_score` when the engine runs from the host
    ids, tag, read = fed if fed is not None else jax.pure_callback(
        functools.partial(self._completions, width=width), out, state.prompt_tokens, state.prompt_lengths, tokens,
        lengths, done, extended)
    # The PRM reads the narrowest bucket that holds the longest re-read (x4 apart: a few programs).
    widths = _buckets(width)
    branches = [functools.partial(self._phi, params, state.prefix, ids[..., :w], tag[..., :w], read) for w in widths]
    which = jnp.searchsorted(jnp.asarray(widths), jnp.max(read))
    phi = jax.lax.switch(jnp.minimum(which, len(widths) - 1), branches) if len(widths) > 1 else branches[0]()
    return phi, state.replace(read=state.read + jnp.sum(read, axis=1))

  def needs_host(self) -> bool:
    """The reader runs on the host (`tts_jax.verifiers.base`: the engine can run it between programs)."""
    return True

  def host_init(self, prompt_tokens, prompt_lengths):
    """The PRM's prompts, on the host: (ids int32[B, Tp + margin], lengths int32[B])."""
    return self._prompts(prompt_tokens, prompt_lengths)

  def host_score(self, prompt_tokens, prompt_lengths, tokens, lengths, done, extended, capacity: int):
    """The extended particles re-read, on the host: (ids int32[B, N, W], tag bool[B, N, W],
    read int32[B, N]) with W what `score` allows at `capacity` cache slots."""
    width = self._width(tokens.shape[-1], capacity)
    return self._completions(prompt_tokens, prompt_lengths, tokens, lengths, done, extended, width=width)

  def _width(self, t: int, capacity: int) -> int:
    """The PRM ids one particle may take with T = t generated tokens and `capacity` cache slots."""
    return self.max_tokens or self.reader.max_ids(min(t, capacity), self.max_steps)

  def _phi(self, params, prefix, ids, tag, read):
    """log phi float32[B, N] of PRM ids int32[B, N, W] read at `tag` bool[B, N, W]."""
    b, n, width = ids.shape
    c = _divisor_at_most(n, self.tokens_per_read // (b * width))  # particles per chunk
    if c == n:
      values = self.model.extend(params, prefix, ids, read)
    else:  # chunks of c particles one after another: [N/c, B, c, ...]
      split = lambda x: jnp.swapaxes(x.reshape((b, n // c, c) + x.shape[2:]), 0, 1)
      values = jax.lax.map(lambda a: self.model.extend(params, prefix, *a), (split(ids), split(read)))
      values = jnp.swapaxes(values, 0, 1).reshape(b, n, width)
    values = values.astype(jnp.float32)  # [B, N, W]
    r = read_logits(values, self.transform)
    if self.aggregate == "last":
      last = jnp.max(jnp.where(tag, jnp.arange(width), -1), axis=-1)
      phi = jnp.take_along_axis(r, jnp.maximum(last, 0)[..., None], axis=-1)[..., 0]
    elif self.aggregate == "prod":
      phi = jnp.sum(jnp.where(tag, r, 0.0), axis=-1)
    else:
      phi = jnp.min(jnp.where(tag, r, jnp.inf), axis=-1)
    return jnp.where(jnp.any(tag, axis=-1), phi, 0.0)  # rows not read: 0

  def _prompts(self, tokens, lengths):
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    out = np.zeros(tokens.shape[:1] + (tokens.shape[1] + self.reader.prompt_margin(),), np.int32)
    sizes = np.zeros(lengths.shape, np.int32)
    for b in range(len(lengths)):
      ids = self.reader.prompt(tokens[b, :lengths[b]].tolist())
      if len(ids) > out.shape[1]:
        raise ValueError(f"the PRM's prompt of prompt {b} is {len(ids)} ids, more than the {out.shape[1]} its reader "
                         f"allows (the policy's width {tokens.shape[1]} + prompt_margin)")
      out[b, :len(ids)], sizes[b] = ids, len(ids)
    return out, sizes

  def _completions(self, prompt_tokens, prompt_lengths, tokens, lengths, done, extended, *, width: int):
    prompt_tokens, prompt_lengths = np.asarray(prompt_tokens), np.asarray(prompt_lengths)
    tokens, lengths, done, extended = (np.asarray(x) for x in (tokens, lengths, done, extended))
    out = np.zeros(tokens.shape[:2] + (width,), np.int32)
    reads = np.zeros(tokens.shape[:2] + (width,), bool)
    sizes = np.zeros(lengths.shape, np.int32)
    for b, n in zip(*np.nonzero(extended)):
      ids, mask = self.reader.completion(prompt_tokens[b, :prompt_lengths[b]].tolist(),
                                         tokens[b, n, :lengths[b, n]].tolist(), bool(done[b, n]))
      if len(ids) > width:
        raise ValueError(f"the PRM reads {len(ids)} ids for a particle of {lengths[b, n]} tokens, more than the "
                         f"{width} allowed (max_steps={self.max_steps} steps of that many tokens); set "
                         f"StepTagPotential(max_steps=...) or max_tokens=... higher")
      out[b, n, :len(ids)], reads[b, n, :len(ids)], sizes[b, n] = ids, mask, len(ids)
    return out, reads, sizes


def _buckets(width: int, first: int = 256, factor: int = 4) -> list[int]:
  """Widths first, first x factor, ... below `width`, then `width`."""
  out = []
  while first < width:
    out.append(first)
    first *= factor
  return out + [width]


def _divisor_at_most(n: int, most: int) -> int:
  """The largest divisor of n that is at most max(most, 1)."""
  return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(most, 1))
