"""A pool of n samples per problem, with everything selection methods read.

The runner draws the pool once per problem at the largest budget; a method at
budget k < n is evaluated as the expectation over k-subsets of the pool drawn
without replacement (exactly where a closed form exists, else by Monte Carlo
over `num_subsets` subsets, with its standard error reported).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from tts_jax.selection import encode_answers
from tts_jax.tasks import Completions
from tts_jax.verifiers import aggregate_steps
from tts_jax.verifiers.corruption import checker_noise, corrupted_scores


@dataclasses.dataclass
class Pool:
  """n samples for each of P problems (numpy arrays, leading dims [P, n]).

  answers: int32 answer ids by first appearance (-1 = none); correct: bool (exact verifier);
  lengths: generated tokens; mean_entropy / mean_logprob: per-token means; seq_ids: int32
  ids of distinct completions; prompt_lens: int32[P]; orm: float32 ORM probabilities or
  None; prm_steps: float32[P, n, S] PRM probabilities at each step (the last real one
  at the final token) with prm_mask bool[P, n, S], or None; oracle_noise: float64 standard
  normals, a pure function of each sample's text (`corruption.checker_noise`, the engine's
  own), for corrupted checkers.
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
  oracle_noise: np.ndarray | None = None

  @property
  def shape(self) -> tuple[int, int]:
    return self.answers.shape

  def padded(self, rows: int) -> "Pool":
    """This pool with problems repeated from the first up to `rows` (fixed shapes for jit)."""
    pad = rows - self.shape[0]
    if pad <= 0:
      return self
    grow = lambda x: None if x is None else np.concatenate([x, np.repeat(x[:1], pad, axis=0)])  # noqa: E731
    return Pool(**{f.name: grow(getattr(self, f.name)) for f in dataclasses.fields(self)})

  def verifier_scores(self, verifier: str, aggregate: str = "last", auc: float = 1.0) -> np.ndarray:
    """float32[P, n] per-sample probability from the ORM, the PRM aggregated by `aggregate`, or
    the exact outcome checker ("oracle"; corrupted to ROC AUC `auc` when < 1, see
    `tts_jax.verifiers.oracle`)."""
    if verifier == "oracle":
      noise = self.oracle_noise if self.oracle_noise is not None else np.zeros(self.shape)
      return corrupted_scores(self.correct, noise, auc).astype(np.float32)
    if verifier == "orm":
      if self.orm is None:
        raise ValueError("this pool was built without ORM scores")
      return self.orm
    if verifier == "prm":
      if self.prm_steps is None:
        raise ValueError("this pool was built without PRM scores")
      return np.asarray(aggregate_steps(jnp.asarray(self.prm_steps), jnp.asarray(self.prm_mask), aggregate))
    raise ValueError(f"unknown verifier {verifier!r}; use 'orm', 'prm' or 'oracle'")


def build_pool(task, problems, prompts, comps: Completions) -> Pool:
  """Grades sampled completions (verifier scores are filled by `Batch.pool`, from `BatchGroup`)."""
  answers, _ = encode_answers([[task.extract_answer(t) for t in row] for row in comps.texts])
  correct = np.array([[task.verify(pr, t) for t in row] for pr, row in zip(problems, comps.texts)], bool)
  return pool_of(answers, correct, prompts, comps)


def pool_of(answers: np.ndarray, correct: np.ndarray, prompts, comps: Completions) -> Pool:
  """The pool of graded completions: answers int32[P, n] (`encode_answers`), correct bool[P, n]."""
  p, n = comps.lengths.shape
  lens = comps.lengths
  mask = np.arange(comps.tokens.shape[-1])[None, None] < lens[..., None]
  denom = np.maximum(lens, 1)
  seq_ids = np.zeros((p, n), np.int32)
  for i in range(p):
    seen: dict[bytes, int] = {}
    for j in range(n):
      seq_ids[i, j] = seen.setdefault(comps.tokens[i, j, :lens[i, j]].tobytes(), len(seen))
  prompt_lens = np.array([len(x) for x in prompts], np.int32)
  prompt_ids = np.zeros((p, max(prompt_lens, default=0)), np.int64)
  for i, ids in enumerate(prompts):
    prompt_ids[i, :len(ids)] = ids
  noise = checker_noise(0, prompt_ids, prompt_lens, comps.tokens, lens, np.ones((p, n), bool))
  return Pool(answers=answers, correct=correct, lengths=lens.astype(np.int32),
              mean_entropy=(comps.entropy * mask).sum(-1) / denom, mean_logprob=(comps.logprobs * mask).sum(-1) / denom,
              seq_ids=seq_ids, prompt_lens=prompt_lens, oracle_noise=noise)
