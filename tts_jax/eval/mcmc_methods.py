"""MCMC as an experiment method: QAlign (Faria et al. 2025).

One Metropolis-Hastings chain per problem (`tts_jax.mcmc.qalign`) of max(budgets) states:
the start (a sample of the policy) and max(budgets) - 1 steps. Budget N reads the first N
states, so one chain serves every budget, as a pool does; the answer is QAlign's majority
vote over those states' answers (or the last state's). The cost counts what the chain did up
to state N: each step prefills the prompt plus the kept prefix, decodes its suffix, and (with
the ORM as reward) scores the whole completion.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Literal

import numpy as np

from tts_jax.eval.batch import Batch
from tts_jax.eval.cost import Cost, forward_flops, kv_bytes_per_token
from tts_jax.eval.method import Outcome
from tts_jax.mcmc import QAlignChains, qalign
from tts_jax.tasks import completion_text, step_oracle, task_tokens
from tts_jax.verifiers import OutcomePotential


@dataclasses.dataclass(frozen=True)
class QAlign:
  """QAlign: MCMC targeting p(x) exp(r(x) / beta). reward: "orm" (r = log of the shipped
  ORM's probability that x is right, so beta = 1 targets p(x | right) as the ORM sees it) or
  "oracle" (the task's exact checker: r = log(1 - eps) if right, log eps if not); final:
  "majority" (QAlign's vote over the chain's states) or "last" (the last state)."""

  reward: Literal["orm", "oracle"] = "orm"
  beta: float = 1.0
  final: Literal["majority", "last"] = "majority"
  name: str = "QAlign (ORM)"
  timing_phase = "search"

  def verifiers(self) -> tuple[str, ...]:
    return ("orm",) if self.reward == "orm" else ()

  def check_budgets(self, budgets) -> None:
    if self.reward not in ("orm", "oracle"):
      raise ValueError(f"reward must be 'orm' or 'oracle', got {self.reward!r}")
    if self.final not in ("majority", "last"):
      raise ValueError(f"final must be 'majority' or 'last', got {self.final!r}")
    if not isinstance(self.beta, (int, float)) or not np.isfinite(self.beta) or self.beta <= 0:
      raise ValueError(f"beta must be a finite number > 0, got {self.beta!r}")

  def run_engine(self, models, exp, tokens, lengths, keys, budget: int, mesh=None) -> QAlignChains:
    """One chain of `budget` states per prompt (int32[B, Tp] prompts, one key per prompt)."""
    ids = task_tokens(exp.task)
    if self.reward == "orm":
      reward, reward_params = OutcomePotential(models.orm.as_lm(), transform="log"), models.orm_params
    else:
      reward, reward_params = step_oracle(exp.task, "log"), None
    return qalign(models.policy, models.policy_params, tokens, lengths, keys, reward=reward,
                  reward_params=reward_params, steps=budget - 1, beta=float(self.beta), num_chains=1,
                  max_new_tokens=exp.max_new_tokens, stop_tokens=ids.stop, pad_id=ids.pad, mesh=mesh)

  def host_state(self, chains: QAlignChains) -> QAlignChains:
    return chains

  def evaluate(self, batch: Batch, index: int) -> dict[int, list[Outcome]]:
    budgets = batch.experiment.budgets
    chains = batch.search(self, index, max(budgets))
    task, models = batch.task, batch.models
    orm = models.orm.config if self.reward == "orm" else None
    out: dict[int, list[Outcome]] = {k: [] for k in budgets}
    for i, problem in enumerate(batch.problems):
      n = np.asarray(chains.lengths[i, 0])
      texts = [completion_text(task, chains.tokens[i, 0, j, :n[j]]) for j in range(len(n))]
      answers = [task.extract_answer(t) for t in texts]
      steps = _step_costs(models.policy.config, orm, len(batch.prompts[i]), np.asarray(chains.kept[i, 0]),
                          np.asarray(chains.drawn[i, 0]))
      for k in budgets:
        text = self._answer(texts[:k], answers[:k])
        cost = sum(steps[:k], Cost())
        if orm is not None:
          cost = cost + Cost(verifier_tokens=float(len(batch.prompts[i])),
                             flops=forward_flops(orm, len(batch.prompts[i]), head_outputs=1))
        accepted = np.asarray(chains.accepted[i, 0, :k - 1], np.float64)
        out[k].append(Outcome(accuracy=float(task.verify(problem, text)), samples=float(k), cost=cost,
                              extra=(("acceptance", float(accepted.mean()) if k > 1 else 0.0),)))
    return out

  def _answer(self, texts: list[str], answers: list) -> str:
    if self.final == "last":
      return texts[-1]
    votes = Counter(a for a in answers if a is not None)
    if not votes:
      return texts[-1]
    best = max(votes, key=lambda a: (votes[a], -answers.index(a)))  # ties: the answer seen first
    return texts[answers.index(best)]


def _step_costs(policy, orm, prompt_len: int, kept: np.ndarray, drawn: np.ndarray) -> list[Cost]:
  """The compute of each chain state's proposal: prefill prompt + kept, decode drawn; with an
  ORM, score kept + drawn on top of the prompt (its prompt prefill is counted once)."""
  out = []
  for k, d in zip(kept.tolist(), drawn.tolist()):
    context = prompt_len + k
    flops = forward_flops(policy, context) + forward_flops(policy, d, context_start=context)
    verifier_tokens = 0.0
    if orm is not None:
      flops += forward_flops(orm, k + d, context_start=prompt_len, head_outputs=1)
      verifier_tokens = float(k + d)
    out.append(Cost(prompt_tokens=float(prompt_len) if not out else 0.0, generated_tokens=float(d),
                    verifier_tokens=verifier_tokens, flops=flops,
                    kv_bytes=float(kv_bytes_per_token(policy) * (context + d))))  # KV written by this step
  return out
