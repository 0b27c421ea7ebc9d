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

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.models import pad_prompts
from tts_jax.models.value import ValueModel, value_logits
from tts_jax.parallel import MODEL, data_size, padded_rows, per_device, place_params, shard_batch, to_host
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




# Completion tokens a packed scoring chunk runs through the model at once (`pack_completions`).
# Smaller than the engines' `models.memory.REREAD_TOKENS` on purpose: a pool's last used chunk
# is padded and empty chunks are skipped, so finer chunks waste less (main experiment, one
# batch of 760 distinct rows at width 56: chunks of 64-256 rows all ~0.7-0.9 s, 585 rows
# would pad 760 to 1,170).
SCORE_TOKENS = 8192


@dataclasses.dataclass(frozen=True)
class PackedCompletions:
  """The distinct non-empty completions of [P, N] rows, packed into C chunks of R rows
  (`pack_completions`), in `blocks` equal blocks of prompts (one per device; a block's
  chunks index its own prompts, so each device packs exactly what a one-device call on its
  prompts packs).

  tokens: int32[C, R, W]; lengths: int32[C, R] (0: an unused slot); prompt: int32[C, R]
  the prompt (within its block) each row extends; positions: int32[C, R, Q] or None;
  used: bool[C], chunks holding a row (the rest are skipped); row: int64[P, N], each
  completion's packed row (flat over [C, R]), -1 for an empty one.
  """

  tokens: np.ndarray
  lengths: np.ndarray
  prompt: np.ndarray
  positions: np.ndarray | None
  used: np.ndarray
  row: np.ndarray


def pack_completions(tokens: np.ndarray, lengths: np.ndarray, positions: np.ndarray | None = None,
                     blocks: int = 1, chunk_tokens: int = SCORE_TOKENS) -> PackedCompletions:
  """Packs completions tokens int32[P, N, W] (lengths int32[P, N]) for scoring: each
  distinct (prompt, completion, positions) once, empty ones not at all, R = chunk_tokens // W
  rows per chunk (at least 1, at most a block's rows). P must be a multiple of `blocks`.
  Sampled pools repeat themselves (a problem's 64 samples hold ~30 distinct texts in the
  main experiment), and a chunk without rows is skipped, so the model's work follows the
  distinct completions while the shapes, hence the compiled program, depend only on
  [P, N, W]."""
  p, n, w = tokens.shape
  if p % blocks:
    raise ValueError(f"{p} prompts do not split into {blocks} equal blocks")
  per_block = (p // blocks) * n
  r = max(1, min(per_block, chunk_tokens // max(w, 1)))
  c = -(-per_block // r)
  keys = np.concatenate([np.repeat(np.arange(p), n)[:, None], lengths.reshape(-1, 1),
                         np.where(np.arange(w) < lengths[..., None], tokens, 0).reshape(-1, w)]
                        + ([] if positions is None else [positions.reshape(p * n, -1)]), axis=1).astype(np.int32)
  _, first, inverse = np.unique(np.ascontiguousarray(keys).view(np.dtype((np.void, keys.shape[1] * 4))).ravel(),
                                return_index=True, return_inverse=True)
  take = np.sort(first[lengths.reshape(-1)[first] > 0])  # the distinct non-empty rows, in order
  slot = np.full(p * n, -1, np.int64)
  out_tokens = np.zeros((blocks * c * r, w), np.int32)
  out_lengths = np.zeros(blocks * c * r, np.int32)
  out_prompt = np.zeros(blocks * c * r, np.int32)
  out_positions = None if positions is None else np.zeros((blocks * c * r, positions.shape[-1]), np.int32)
  block_of = take // per_block
  for b in range(blocks):
    mine = take[block_of == b]
    at = b * c * r + np.arange(len(mine))
    slot[mine] = at
    out_tokens[at], out_lengths[at] = tokens.reshape(p * n, w)[mine], lengths.reshape(-1)[mine]
    out_prompt[at] = mine // n - b * (p // blocks)
    if positions is not None:
      out_positions[at] = positions.reshape(p * n, -1)[mine]
  row = np.where(lengths.reshape(-1) > 0, slot[first[inverse.ravel()]], -1).reshape(p, n)
  shape = lambda x: None if x is None else x.reshape((blocks * c, r) + x.shape[1:])  # noqa: E731
  return PackedCompletions(tokens=shape(out_tokens), lengths=shape(out_lengths), prompt=shape(out_prompt),
                           positions=shape(out_positions), used=(out_lengths.reshape(blocks * c, r) > 0).any(-1),
                           row=row)


@functools.partial(jax.jit, static_argnums=0)
def _prompt_and_completion_values(lm, params, prompt_tokens, prompt_lengths, tokens, lengths, prompt, used,
                                  positions=None):
  """(value at each prompt's last token [P], values [C, R, W or Q]) of packed chunks: the
  prompts prefilled once, each used chunk extending its rows' prompts, unused ones skipped."""
  last_prompt, prefix = lm.prefill(params, prompt_tokens, prompt_lengths)

  def chunk(args):
    toks, lens, rows, use = args[:4]
    pos = None if positions is None else args[4][:, None]
    run = lambda _: lm.extend(params, prefix, toks[:, None], lens[:, None], pos, prefix_rows=rows)[:, 0]  # noqa: E731
    skip = lambda _: jnp.zeros(out.shape, out.dtype)  # noqa: E731
    out = jax.eval_shape(run, None)
    return jax.lax.cond(use, run, skip, None)

  chunks = (tokens, lengths, prompt, used) + (() if positions is None else (positions,))
  return last_prompt, jax.lax.map(chunk, chunks)


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
  each prompt + completion. Each distinct non-empty completion of a prompt is run once,
  packed with the others into chunks of `SCORE_TOKENS` tokens (`pack_completions`);
  duplicates get their twin's values, empty completions zeros.

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
  completion token (0 past its length), or float32[P, N, Q] at `positions`).
  """
  ptoks, plens = pad_prompts(prompts, width=prompt_width)
  width = completion_width(lengths) if width is None else width
  if width < 1:
    raise ValueError(f"completion width must be >= 1, got {width}")
  toks = np.zeros(tokens.shape[:2] + (width,), np.int32)
  cut = min(width, tokens.shape[2])
  toks[..., :cut] = tokens[..., :cut]
  cut_lengths = np.minimum(lengths, width).astype(np.int32)
  if positions is not None:
    positions = np.asarray(positions, np.int32)
    if positions.shape[:2] != tokens.shape[:2] or positions.ndim != 3:
      raise ValueError(f"positions must be int32[P, N, Q] with [P, N] = {tokens.shape[:2]}, got {positions.shape}")
    if positions.size and not 0 <= positions.min() <= positions.max() < width:
      raise ValueError(f"positions must lie in [0, {width}), got [{positions.min()}, {positions.max()}]")
  p = len(prompts)
  per_device_blocks = mesh is not None and mesh.shape[MODEL] == 1
  blocks = data_size(mesh) if per_device_blocks else 1
  rows = padded_rows(p, mesh) if per_device_blocks else p  # shard_batch's padding: empty prompts
  pad = lambda x: np.concatenate([x, np.zeros((rows - p,) + x.shape[1:], x.dtype)])  # noqa: E731
  packed = pack_completions(pad(toks), pad(cut_lengths), None if positions is None else pad(positions), blocks)
  lm = model.as_lm()
  args = tuple(jnp.asarray(x) for x in (ptoks, plens))
  chunks = (packed.tokens, packed.lengths, packed.prompt, packed.used)
  chunks += () if positions is None else (packed.positions,)
  if mesh is not None and not per_device_blocks:  # unused chunks up to the data axis (not `shard_batch`'s copies)
    more = padded_rows(len(packed.used), mesh) - len(packed.used)
    chunks = tuple(np.concatenate([x, np.zeros((more,) + x.shape[1:], x.dtype)]) for x in chunks)
  chunks = tuple(jnp.asarray(x) for x in chunks)
  if mesh is None:
    first, values = _prompt_and_completion_values(lm, params, *args, *chunks)
  else:
    params, args, chunks = place_params(mesh, params), shard_batch(mesh, *args), shard_batch(mesh, *chunks)
    run = _values_per_device if per_device_blocks else _values_tensor_parallel
    first, values = run(lm, mesh, params, *args, *chunks)
    first = first[:p]
  first, values = to_host((first, values))
  flat = values.reshape((-1,) + values.shape[2:])
  out = np.where((packed.row >= 0).reshape(packed.row.shape + (1,) * (flat.ndim - 1)),
                 flat[np.maximum(packed.row, 0)], 0).astype(flat.dtype)
  return first, out[:p]


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
  # Its last token, the query block padded (with copies) to a PRM's multiple: an ORM and a PRM
  # of one architecture then score with the same compiled program.
  at = np.repeat(np.maximum(np.asarray(lengths) - 1, 0)[..., None], STEP_QUERY_MULTIPLE, axis=-1)
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
