"""A pool of n samples per problem, with everything selection methods read.

The runner draws the pool once per problem at the largest budget; a method at
budget k < n is evaluated as the expectation over k-subsets of the pool drawn
without replacement (exactly where a closed form exists, else by Monte Carlo
over `num_subsets` subsets, with its standard error reported).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.models.value import value_logits
from tts_jax.selection.voting import aggregate_steps, encode_answers
from tts_jax.tasks.base import STEP
from tts_jax.tasks.rollout import Completions


@dataclasses.dataclass
class Pool:
  """n samples for each of P problems (numpy arrays, leading dims [P, n]).

  answers: int32 answer ids by first appearance (-1 = none); correct: bool (exact verifier);
  lengths: generated tokens; mean_entropy / mean_logprob: per-token means; seq_ids: int32
  ids of distinct completions; prompt_lens: int32[P]; orm: float32 ORM probabilities or
  None; prm_steps: float32[P, n, S] PRM probabilities at each step (the last real one
  at the final token) with prm_mask bool[P, n, S], or None.
  """

  answers: np.ndarray
  correct: np.ndarray
  lengths: np.ndarray
  mean_entropy: np.ndarray
  mean_logprob: np.ndarray
  seq_ids: np.ndarray
  prompt_lens: np.ndarray
  orm: np.ndarray | None = None
  prm_steps: np.ndarray | None = None
  prm_mask: np.ndarray | None = None

  @property
  def shape(self) -> tuple[int, int]:
    return self.answers.shape

  def verifier_scores(self, verifier: str, aggregate: str = "last") -> np.ndarray:
    """float32[P, n] per-sample probability from the ORM, or the PRM aggregated by `aggregate`."""
    if verifier == "orm":
      if self.orm is None:
        raise ValueError("this pool was built without ORM scores")
      return self.orm
    if verifier == "prm":
      if self.prm_steps is None:
        raise ValueError("this pool was built without PRM scores")
      return np.asarray(aggregate_steps(jnp.asarray(self.prm_steps), jnp.asarray(self.prm_mask), aggregate))
    raise ValueError(f"unknown verifier {verifier!r}; use 'orm' or 'prm'")


def _score_sequences(model, params, seqs, chunk: int = 256) -> list[np.ndarray]:
  width = -(-max(map(len, seqs)) // 16) * 16
  toks = np.zeros((len(seqs), width), np.int32)
  for i, s in enumerate(seqs):
    toks[i, :len(s)] = s
  lens = np.array([len(s) for s in seqs], np.int32)
  pad = (-len(seqs)) % chunk
  toks = np.concatenate([toks, np.zeros((pad, width), np.int32)])
  lens = np.concatenate([lens, np.ones(pad, np.int32)])
  out = np.concatenate([np.asarray(value_logits(model, params, jnp.asarray(toks[i:i + chunk]),
                                                jnp.asarray(lens[i:i + chunk])))
                        for i in range(0, len(toks), chunk)])
  return [out[i, :len(s)] for i, s in enumerate(seqs)]


def build_pool(task, problems, prompts, comps: Completions, *, orm=None, prm=None) -> Pool:
  """Grades and scores sampled completions. orm / prm: (ValueModel, params) or None."""
  p, n = comps.lengths.shape
  answers, _ = encode_answers([[task.extract_answer(t) for t in row] for row in comps.texts])
  correct = np.array([[task.verify(pr, t) for t in row] for pr, row in zip(problems, comps.texts)])
  lens = comps.lengths
  mask = np.arange(comps.tokens.shape[-1])[None, None] < lens[..., None]
  denom = np.maximum(lens, 1)
  mean_entropy = (comps.entropy * mask).sum(-1) / denom
  mean_logprob = (comps.logprobs * mask).sum(-1) / denom
  seq_ids = np.zeros((p, n), np.int32)
  for i in range(p):
    seen: dict[bytes, int] = {}
    for j in range(n):
      seq_ids[i, j] = seen.setdefault(comps.tokens[i, j, :lens[i, j]].tobytes(), len(seen))
  pool = Pool(answers=answers, correct=correct, lengths=lens.astype(np.int32), mean_entropy=mean_entropy,
              mean_logprob=mean_logprob, seq_ids=seq_ids, prompt_lens=np.array([len(x) for x in prompts], np.int32))
  if orm is None and prm is None:
    return pool
  seqs = [list(prompts[i]) + comps.tokens[i, j, :lens[i, j]].tolist() for i in range(p) for j in range(n)]
  if orm is not None:
    scores = _score_sequences(*orm, seqs)
    pool.orm = np.array([jax.nn.sigmoid(s[-1]) for s in scores], np.float32).reshape(p, n)
  if prm is not None:
    step_id = task.tokenizer().token_to_id(STEP)
    scores = _score_sequences(*prm, seqs)
    positions = [[k for k in range(len(prompts[i // n]), len(s)) if s[k] == step_id and k != len(s) - 1]
                 + [len(s) - 1] for i, s in enumerate(seqs)]
    width = max(map(len, positions))
    steps = np.zeros((p * n, width), np.float32)
    smask = np.zeros((p * n, width), bool)
    for i, (pos, sc) in enumerate(zip(positions, scores)):
      steps[i, :len(pos)] = 1 / (1 + np.exp(-sc[pos]))
      smask[i, :len(pos)] = True
    pool.prm_steps, pool.prm_mask = steps.reshape(p, n, width), smask.reshape(p, n, width)
  return pool
