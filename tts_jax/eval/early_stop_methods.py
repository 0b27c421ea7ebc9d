"""Confidence-based early stopping as an experiment method: DeepConf online (Fu et al. 2025).

At budget N a warm-up of ceil(warmup x N) samples per problem is drawn with confidence
tracking (`tts_jax.sampling.ConfidenceWindow`); its lowest group confidences set the
problem's threshold, their (1 - keep) quantile (keep = 0.9: DeepConf-high, 0.1: DeepConf-low).
The other N - warm-up samples stop as soon as a group's confidence falls below it, and are
dropped. The answer is the vote of the kept samples weighted by their lowest group
confidence. The cost counts every token generated, the stopped samples' included, so the
tokens saved show against majority vote at the same N.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.eval.batch import Batch
from tts_jax.eval.cost import sampling_cost
from tts_jax.eval.method import Outcome
from tts_jax.sampling import LOW_CONFIDENCE, ConfidenceWindow, sample
from tts_jax.tasks import completion_text, task_tokens


@dataclasses.dataclass(frozen=True)
class DeepConf:
  """DeepConf online: window and top_k define the confidence (`ConfidenceWindow`), warmup the
  fraction of N drawn first to set the threshold, keep the fraction of warm-up samples that
  would have survived it."""

  window: int = 16
  top_k: int = 20
  warmup: float = 0.25
  keep: float = 0.9
  name: str = "DeepConf (keep 90%)"
  timing_phase = "search"

  def verifiers(self) -> tuple[str, ...]:
    return ()

  def check_budgets(self, budgets) -> None:
    ConfidenceWindow(self.window, self.top_k)  # raises on a bad window / top_k
    if not 0 < self.warmup <= 1:
      raise ValueError(f"warmup must be in (0, 1], got {self.warmup!r}")
    if not 0 < self.keep <= 1:
      raise ValueError(f"keep must be in (0, 1], got {self.keep!r}")

  def warmup_size(self, n: int) -> int:
    return max(1, min(n, math.ceil(self.warmup * n)))

  def run_engine(self, models, exp, tokens, lengths, keys, budget: int, mesh=None) -> dict[str, Any]:
    """Warm-up and remaining samples of each prompt (int32[B, Tp]) at budget N = `budget`."""
    del mesh  # confidence tracking runs on one device
    ids, s = task_tokens(exp.task), exp.sampling
    conf = ConfidenceWindow(self.window, self.top_k)
    kw = dict(prompt_lengths=lengths, max_new_tokens=exp.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
              top_p=s.top_p, min_p=s.min_p, stop_tokens=ids.stop, pad_id=ids.pad, confidence=conf)
    fold = lambda i: jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)  # noqa: E731
    nw = self.warmup_size(budget)
    warm = sample(models.policy, models.policy_params, tokens, key=fold(0), num_samples=nw, **kw)
    # Warm-up samples shorter than the window (confidence inf) have no group: left out; a
    # problem without any group never stops a sample (threshold -inf).
    groups = jnp.where(jnp.isfinite(warm.group_confidence), warm.group_confidence, jnp.nan)
    threshold = jnp.nanquantile(groups, 1.0 - self.keep, axis=1, method="lower")
    threshold = jnp.where(jnp.isnan(threshold), -jnp.inf, threshold)
    rest = None
    if budget > nw:
      rest = sample(models.policy, models.policy_params, tokens, key=fold(1), num_samples=budget - nw,
                    confidence_threshold=threshold, **kw)
    return {"warm": warm, "rest": rest, "threshold": threshold}

  def host_state(self, run: dict) -> dict:
    return run

  def evaluate(self, batch: Batch, index: int) -> dict[int, list[Outcome]]:
    task = batch.task
    out = {}
    for k in batch.experiment.budgets:
      run = batch.search(self, index, k)
      parts = [run["warm"]] + ([run["rest"]] if run["rest"] is not None else [])
      rows = []
      for i, problem in enumerate(batch.problems):
        lengths = np.concatenate([np.asarray(p.lengths[i]) for p in parts])
        kept = np.concatenate([np.asarray(p.finish_reason[i]) != LOW_CONFIDENCE for p in parts])
        conf = np.concatenate([np.asarray(p.group_confidence[i], np.float64) for p in parts])
        texts = [completion_text(task, p.tokens[i, j, :p.lengths[i, j]]) for p in parts for j in range(p.lengths.shape[1])]
        text = _confidence_vote(task, texts, conf, kept)
        rows.append(Outcome(accuracy=float(task.verify(problem, text)), samples=float(k),
                            cost=sampling_cost(batch.models.policy.config, len(batch.prompts[i]), lengths.tolist()),
                            extra=(("stopped", float(np.sum(~kept))),)))
      out[k] = rows
    return out


def _confidence_vote(task, texts: list[str], conf: np.ndarray, kept: np.ndarray) -> str:
  """The kept samples' answers weighted by their lowest group confidence (a sample shorter than
  the window, confidence inf, weighs as the most confident finite one)."""
  finite = conf[np.isfinite(conf) & kept]
  top = float(finite.max()) if finite.size else 1.0
  votes: dict = {}
  for t, c, ok in zip(texts, conf, kept):
    a = task.extract_answer(t) if ok else None
    if a is not None:
      votes[a] = votes.get(a, 0.0) + (c if np.isfinite(c) else top)
  if not votes:
    return texts[0]
  best = max(votes, key=votes.get)
  return next(t for t, ok in zip(texts, kept) if ok and task.extract_answer(t) == best)
