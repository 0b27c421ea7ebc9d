"""Sampling completions of task prompts in fixed-size batches, and grading them."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.models import pad_prompts
from tts_jax.parallel import data_size, to_host
from tts_jax.sampling import sample
from tts_jax.tasks.base import completion_text, prompt_ids, task_tokens


@dataclasses.dataclass
class Completions:
  """n completions for each of P prompts.

  tokens: int32[P, n, T]; lengths: int32[P, n]; texts: P lists of n strings;
  logprobs: float32[P, n, T] under the model; entropy: float32[P, n, T].
  """

  tokens: np.ndarray
  lengths: np.ndarray
  texts: list[list[str]]
  logprobs: np.ndarray
  entropy: np.ndarray


def complete(task, lm, params, prompts: list[list[int]], *, num_samples: int, key: jax.Array,
             max_new_tokens: int, temperature: float = 1.0, batch_prompts: int = 64, index_offset: int = 0,
             prompt_width: int | None = None, mesh=None, row_index=None, **sampling) -> Completions:
  """Samples `num_samples` completions of each prompt (token-id lists), `batch_prompts` at a time.

  Every batch has the same shape (the last is padded with copies of its first prompt), so
  one compilation serves the whole set. Prompt i uses key fold_in(key, index_offset + i):
  its samples do not depend on the batching. prompt_width: pad prompts to this width (one
  width for all calls of a run: no recompilation across calls). row_index: int[len(prompts)],
  prompt i's key index instead of index_offset + i. mesh: a `tts_jax.parallel`
  mesh; its D data devices each take one batch of `batch_prompts` per call (D batches at
  once), so every device runs the single-device program and the completions are bit for
  bit those of a run without a mesh.
  """
  ids = task_tokens(task)
  pad = ids.pad
  tokens, lengths = pad_prompts(prompts, pad_id=pad, width=prompt_width)
  per_call = batch_prompts * data_size(mesh)
  outs = []
  for start in range(0, len(prompts), per_call):
    rows = []
    for first in range(start, start + per_call, batch_prompts):
      first = first if first < len(prompts) else start  # past the end: a copy of the first batch (dropped)
      idx = np.arange(first, first + batch_prompts)
      rows.append(np.where(idx < len(prompts), idx, first))  # a short batch is padded with its first prompt
    rows = np.concatenate(rows)
    index = rows + index_offset if row_index is None else np.asarray(row_index)[rows]
    keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.asarray(index))
    out = sample(lm, params, tokens[rows], prompt_lengths=lengths[rows], key=keys, num_samples=num_samples,
                 max_new_tokens=max_new_tokens, temperature=temperature, stop_tokens=ids.stop, pad_id=pad, mesh=mesh,
                 **sampling)
    outs.append(to_host(out))
  cat = lambda f: np.concatenate([getattr(o, f) for o in outs])[:len(prompts)]
  tokens, lengths = cat("tokens"), cat("lengths")
  texts = [[completion_text(task, tokens[p, n, :lengths[p, n]]) for n in range(num_samples)]
           for p in range(len(prompts))]
  return Completions(tokens=tokens, lengths=lengths, texts=texts, logprobs=cat("logprobs"),
                     entropy=cat("entropy"))


def grade(task, problems, completions: Completions) -> np.ndarray:
  """bool[P, n]: the exact outcome verifier on every completion."""
  return np.array([[task.verify(p, t) for t in texts] for p, texts in zip(problems, completions.texts)])


def task_prompts(task, problems) -> list[list[int]]:
  return [prompt_ids(task, p) for p in problems]
