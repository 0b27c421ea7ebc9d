"""Scoring finished sequences with a value model (ORM / PRM): one padded, chunked forward pass.

    logits = score_sequences(prm, prm_params, sequences)             # per-token value logits
    p_outcome = outcome_probabilities(orm, orm_params, sequences)    # float32[M]
    p_steps, mask = step_probabilities(prm, prm_params, sequences, starts, delimiters)
    values = completion_values(orm, orm_params, prompts, tokens, lengths)  # N samples per prompt, prompt once

A sequence is prompt + completion token ids; the value at position t estimates the
probability that the text up to and including token t leads to a correct answer.
Rows are padded to one width (`pad_prompts`) and scored `chunk` at a time, every
chunk of one shape, so one compilation serves a whole set.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.models import pad_prompts
from tts_jax.models.value import ValueModel, value_logits
from tts_jax.parallel import MODEL, per_device, place_params, shard_batch, to_host, unpad
from tts_jax.verifiers.steps import step_ends


def value_logits_chunked(model: ValueModel, params, tokens: np.ndarray, lengths: np.ndarray,
                         chunk: int = 256) -> np.ndarray:
  """float32[M, L] value logits of right-padded tokens int32[M, L] (lengths int32[M]), `chunk`
  rows at a time (the last chunk is padded, so every call has the same shape)."""
  m, width = tokens.shape
  pad = (-m) % chunk
  tokens = np.concatenate([tokens, np.zeros((pad, width), np.int32)])
  lengths = np.concatenate([lengths, np.ones(pad, np.int32)])
  out = [np.asarray(value_logits(model, params, jnp.asarray(tokens[i:i + chunk]), jnp.asarray(lengths[i:i + chunk])))
         for i in range(0, len(tokens), chunk)]
  return np.concatenate(out)[:m]


def score_sequences(model: ValueModel, params, sequences: Sequence[Sequence[int]], chunk: int = 256) -> list[np.ndarray]:
  """Per-token value logits float32[len(s)] of each sequence s."""
  tokens, lengths = pad_prompts(sequences)
  out = value_logits_chunked(model, params, tokens, lengths, chunk)
  return [out[i, :n] for i, n in enumerate(lengths)]


def sigmoid(x) -> np.ndarray:
  """The one logit -> probability map of the verifiers (float32)."""
  return np.asarray(jax.nn.sigmoid(jnp.asarray(x, jnp.float32)))


def outcome_probabilities(model: ValueModel, params, sequences: Sequence[Sequence[int]]) -> np.ndarray:
  """float32[M]: an ORM's probability that each sequence is correct (its value at the last token)."""
  return sigmoid([s[-1] for s in score_sequences(model, params, sequences)])


def step_probabilities(model: ValueModel, params, sequences: Sequence[Sequence[int]], starts: Sequence[int],
                       delimiters: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """A PRM's probability at each step end (`step_ends`) of each sequence's generated part.

  starts: where each sequence's generation begins (its prompt length).
  Returns (float32[M, S] probabilities, bool[M, S] mask of real steps), S the most steps.
  """
  scores = score_sequences(model, params, sequences)
  ends = [step_ends(s, start, delimiters) for s, start in zip(sequences, starts)]
  width = max(1, max(map(len, ends)))
  logits = np.zeros((len(sequences), width), np.float32)
  mask = np.zeros((len(sequences), width), bool)
  for i, (at, sc) in enumerate(zip(ends, scores)):
    logits[i, :len(at)] = sc[at]
    mask[i, :len(at)] = True
  return np.where(mask, sigmoid(logits), 0.0).astype(np.float32), mask


COMPLETION_WIDTH_MULTIPLE = 32


@functools.partial(jax.jit, static_argnums=0)
def _prompt_and_completion_values(lm, params, prompt_tokens, prompt_lengths, tokens, lengths, positions=None):
  last_prompt, prefix = lm.prefill(params, prompt_tokens, prompt_lengths)
  return last_prompt, lm.extend(params, prefix, tokens, lengths, positions)


def completion_width(lengths) -> int:
  """The completion width `completion_values` uses by default: the longest completion
  rounded up to a multiple of 32 (so a run's batches share a few shapes)."""
  return -(-max(int(np.max(lengths)), 1) // COMPLETION_WIDTH_MULTIPLE) * COMPLETION_WIDTH_MULTIPLE


def completion_values(model: ValueModel, params, prompts: Sequence[Sequence[int]], tokens: np.ndarray,
                      lengths: np.ndarray, prompt_width: int | None = None, width: int | None = None,
                      mesh=None, last_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Value logits of N completions of each prompt, the prompt computed once (its KV shared
  by its completions, `LanguageModel.extend`): the same numbers as a full forward over
  each prompt + completion.

  prompts: P token lists; tokens: int32[P, N, T] completions, lengths: int32[P, N];
  prompt_width: pad prompts to this width (one width per run: one compilation); width: the
  completion axis is cut (or padded) to this many tokens (default `completion_width`: the
  longest completion rounded up to a multiple of 32); mesh: a `tts_jax.parallel` mesh, the
  P prompts split over its "data" axis (each device scores its rows with the one-device
  program, so its rows are bit for bit a one-device call on them; model > 1: the value
  model split over "model", equal up to float rounding).
  Returns (float32[P] value at each prompt's last token, float32[P, N, width] value at each
  completion token).
  """
  ptoks, plens = pad_prompts(prompts, width=prompt_width)
  width = completion_width(lengths) if width is None else width
  if width < 1:
    raise ValueError(f"completion width must be >= 1, got {width}")
  toks = np.zeros(tokens.shape[:2] + (width,), np.int32)
  cut = min(width, tokens.shape[2])
  toks[..., :cut] = tokens[..., :cut]
  cut_lengths = np.minimum(lengths, width).astype(np.int32)
  lm, args = model.as_lm(), (jnp.asarray(ptoks), jnp.asarray(plens), jnp.asarray(toks), jnp.asarray(cut_lengths))
  if last_only:
    args += (jnp.asarray(np.maximum(cut_lengths - 1, 0)[..., None]),)
  if mesh is None:
    first, values = _prompt_and_completion_values(lm, params, *args)
  else:
    params, args = place_params(mesh, params), shard_batch(mesh, *args)
    run = _values_per_device if mesh.shape[MODEL] == 1 else _values_tensor_parallel
    first, values = unpad(run(lm, mesh, params, *args), len(prompts))
  return to_host((first, values))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _values_per_device(lm, mesh, params, *args):
  return per_device(mesh, lambda *a: _prompt_and_completion_values(lm, params, *a), *args)


def _values_tensor_parallel(lm, mesh, params, *args):
  del mesh  # the shardings of params and args carry it (XLA's SPMD partitioner)
  return _prompt_and_completion_values(lm, params, *args)


def completion_outcome_probabilities(model: ValueModel, params, prompts, tokens, lengths,
                                     prompt_width: int | None = None, width: int | None = None,
                                     mesh=None) -> np.ndarray:
  """float32[P, N]: an ORM's probability for each completion (its value at the completion's
  last token; at the prompt's last token for an empty completion). width, mesh: as in
  `completion_values` (width must cover the longest completion)."""
  _check_width(width, lengths)
  first, last = completion_values(model, params, prompts, tokens, lengths, prompt_width, width, mesh, last_only=True)
  return sigmoid(np.where(lengths > 0, last[..., 0], first[:, None]))


def completion_step_probabilities(model: ValueModel, params, prompts, tokens, lengths, delimiters: Sequence[int],
                                  num_steps: int | None = None, prompt_width: int | None = None,
                                  width: int | None = None, mesh=None):
  """A PRM's probability at each step end of each completion (`step_ends`: every
  delimiter, and the last token, a final delimiter counted once), vectorised over [P, N].
  width, mesh: as in `completion_values` (width must cover the longest completion).

  Returns (float32[P, N, S] probabilities, bool[P, N, S] mask of real steps), S the most
  steps (or num_steps if larger)."""
  _check_width(width, lengths)
  _, values = completion_values(model, params, prompts, tokens, lengths, prompt_width, width, mesh)
  width = values.shape[-1]
  pos = np.arange(width)
  toks = np.zeros(values.shape, np.int64)
  cut = min(width, tokens.shape[-1])
  toks[..., :cut] = tokens[..., :cut]
  last = (lengths - 1)[..., None]
  is_end = ((np.isin(toks, list(delimiters)) & (pos < last)) | (pos == last)) & (lengths[..., None] > 0)
  slot = np.cumsum(is_end, axis=-1) - 1  # the step each end belongs to
  s = max(1, int(is_end.sum(-1).max()), num_steps or 0)
  logits = np.zeros(values.shape[:2] + (s,), np.float32)
  mask = np.zeros(values.shape[:2] + (s,), bool)
  i, j, t = np.nonzero(is_end)
  logits[i, j, slot[i, j, t]] = values[i, j, t]
  mask[i, j, slot[i, j, t]] = True
  return np.where(mask, sigmoid(logits), 0.0).astype(np.float32), mask


def _check_width(width, lengths) -> None:
  if width is not None and width < int(np.max(lengths, initial=0)):
    raise ValueError(f"completion width {width} is shorter than the longest completion ({int(np.max(lengths))} "
                     f"tokens); its last tokens would not be scored")
