"""Scoring finished sequences with a value model (ORM / PRM): one padded, chunked forward pass.

    logits = score_sequences(prm, prm_params, sequences)             # per-token value logits
    p_outcome = outcome_probabilities(orm, orm_params, sequences)    # float32[M]
    p_steps, mask = step_probabilities(prm, prm_params, sequences, starts, delimiters)

A sequence is prompt + completion token ids; the value at position t estimates the
probability that the text up to and including token t leads to a correct answer.
Rows are padded to one width (`pad_prompts`) and scored `chunk` at a time, every
chunk of one shape, so one compilation serves a whole set.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.models import pad_prompts
from tts_jax.models.value import ValueModel, value_logits
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
