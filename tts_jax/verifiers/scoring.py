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




@functools.partial(jax.jit, static_argnums=0)
def _prompt_and_completion_values(lm, params, prompt_tokens, prompt_lengths, tokens, lengths, positions=None):
  last_prompt, prefix = lm.prefill(params, prompt_tokens, prompt_lengths)
  return last_prompt, lm.extend(params, prefix, tokens, lengths, positions)


def completion_width(lengths) -> int:
  """The completion width `completion_values` uses by default: the longest completion rounded
  up to the next of 8, 16, ..., 64, 80, 96, ..., 128, 160, ... (steps of 1/8 of the octave, at
  least 8): at most 12.5% padding, and a run's batches share a few shapes."""
  return round_up_width(max(int(np.max(lengths)), 1))


def round_up_width(n: int) -> int:
  """n >= 1 rounded up to a multiple of max(8, 2 ** (bit_length(n - 1) - 3))."""
  step = max(8, 1 << max((n - 1).bit_length() - 3, 0))
  return -(-n // step) * step


def completion_values(model: ValueModel, params, prompts: Sequence[Sequence[int]], tokens: np.ndarray,
                      lengths: np.ndarray, prompt_width: int | None = None, width: int | None = None,
                      mesh=None, positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Value logits of N completions of each prompt, the prompt computed once (its KV shared
  by its completions, `LanguageModel.extend`): the same numbers as a full forward over
  each prompt + completion.

  prompts: P token lists; tokens: int32[P, N, T] completions, lengths: int32[P, N];
  prompt_width: pad prompts to this width (one width per run: one compilation); width: the
  completion axis is cut (or padded) to this many tokens (default `completion_width`: the
  longest completion rounded up to a few shapes); mesh: a `tts_jax.parallel` mesh, the
  P prompts split over its "data" axis (each device scores its rows with the one-device
  program, so its rows are bit for bit a one-device call on them; model > 1: the value
  model split over "model", equal up to float rounding); positions: optional int32[P, N, Q],
  the values at these completion positions only (each in [0, width)): the last layer then
  runs its queries and MLP there only (`LanguageModel.extend`), e.g. an ORM's last token or
  a PRM's step ends.
  Returns (float32[P] value at each prompt's last token, float32[P, N, width] value at each
  completion token, or float32[P, N, Q] at `positions`).
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
  if positions is not None:
    positions = np.asarray(positions, np.int32)
    if positions.shape[:2] != tokens.shape[:2] or positions.ndim != 3:
      raise ValueError(f"positions must be int32[P, N, Q] with [P, N] = {tokens.shape[:2]}, got {positions.shape}")
    if positions.size and not 0 <= positions.min() <= positions.max() < width:
      raise ValueError(f"positions must lie in [0, {width}), got [{positions.min()}, {positions.max()}]")
    args += (jnp.asarray(positions),)
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
  at = np.maximum(np.asarray(lengths) - 1, 0)[..., None]
  first, last = completion_values(model, params, prompts, tokens, lengths, prompt_width, width, mesh, positions=at)
  return sigmoid(np.where(lengths > 0, last[..., 0], first[:, None]))


def completion_step_probabilities(model: ValueModel, params, prompts, tokens, lengths, delimiters: Sequence[int],
                                  num_steps: int | None = None, prompt_width: int | None = None,
                                  width: int | None = None, mesh=None, num_queries: int | None = None,
                                  ends: np.ndarray | None = None):
  """A PRM's probability at each step end of each completion (`step_ends`: every
  delimiter, and the last token, a final delimiter counted once; or where `ends` bool[P, N, L]
  says, for a PRM that reads its own format), vectorised over [P, N].
  The last layer runs at the step ends only (`completion_values(positions=...)`).
  width, mesh: as in `completion_values` (width must cover the longest completion);
  num_queries: the step ends read per completion (default `step_query_count` of the most
  ends; at least the most ends).

  Returns (float32[P, N, S] probabilities, bool[P, N, S] mask of real steps), S the most
  steps (or num_steps if larger)."""
  _check_width(width, lengths)
  width = completion_width(lengths) if width is None else width
  is_end = step_end_mask(tokens, lengths, delimiters, width, ends=ends)
  most = int(is_end.sum(-1).max(initial=0))
  q = step_query_count(most) if num_queries is None else num_queries
  if q < most:
    raise ValueError(f"num_queries={q} but a completion has {most} step ends")
  # positions[p, n, j]: where completion (p, n)'s j-th step ends (0 past its last step)
  order = np.argsort(~is_end, axis=-1, kind="stable")[..., :q]
  mask = np.take_along_axis(is_end, order, axis=-1)
  positions = np.where(mask, order, 0).astype(np.int32)
  _, values = completion_values(model, params, prompts, tokens, lengths, prompt_width, width, mesh,
                                positions=positions)
  s = max(1, most, num_steps or 0)
  probs = np.zeros(values.shape[:2] + (s,), np.float32)
  full_mask = np.zeros(values.shape[:2] + (s,), bool)
  cut = min(s, q)
  full_mask[..., :cut] = mask[..., :cut]
  probs[..., :cut] = np.where(mask[..., :cut], sigmoid(values[..., :cut]), 0.0)
  return probs, full_mask


def step_end_mask(tokens: np.ndarray, lengths: np.ndarray, delimiters: Sequence[int], width: int,
                  ends: np.ndarray | None = None) -> np.ndarray:
  """bool[P, N, width]: the step ends of completions tokens int32[P, N, T] (lengths int32[P, N]):
  every delimiter before the last token, and the last token (`step_ends`); with `ends`
  bool[P, N, T] given, those of them within each completion's length."""
  pos = np.arange(width)
  if ends is not None:
    out = np.zeros(ends.shape[:2] + (width,), bool)
    cut = min(width, ends.shape[-1])
    out[..., :cut] = ends[..., :cut]
    return out & (pos < lengths[..., None])
  toks = np.zeros(tokens.shape[:2] + (width,), np.int64)
  cut = min(width, tokens.shape[-1])
  toks[..., :cut] = tokens[..., :cut]
  last = (lengths - 1)[..., None]
  return ((np.isin(toks, list(delimiters)) & (pos < last)) | (pos == last)) & (lengths[..., None] > 0)


STEP_QUERY_MULTIPLE = 8


def step_query_count(most_ends: int) -> int:
  """The step ends a PRM reads per completion: the most ends rounded up to a multiple of 8
  (so a run's batches share a few compiled shapes)."""
  return -(-max(most_ends, 1) // STEP_QUERY_MULTIPLE) * STEP_QUERY_MULTIPLE


def _check_width(width, lengths) -> None:
  if width is not None and width < int(np.max(lengths, initial=0)):
    raise ValueError(f"completion width {width} is shorter than the longest completion ({int(np.max(lengths))} "
                     f"tokens); its last tokens would not be scored")
