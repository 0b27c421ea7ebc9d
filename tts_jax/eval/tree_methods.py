"""Step searches outside the particle engine as experiment methods: Monte Carlo tree search
(`tts_jax.search.mcts`) and local acceptance (`tts_jax.search.latts`).

MCTS:
Budget N is the number of simulations per problem; each expansion draws `expansions` candidate
next steps. The answer is the tree's chosen node (`Tree.answer`: the most-visited path, else
the best finished node), completed by one policy rollout when unfinished. The cost counts what
the search did: the prompt is prefilled once; each expansion decodes the expanded node's last
token and its K children's new step against the KV the tree keeps (children share their
parent's pages); the value model reads each child whole (`OutcomePotential`; none with the
exact checker). Each outcome records the most KV pages the tree held ("kv_pages").
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from tts_jax.eval.batch import Batch
from tts_jax.eval.cost import Cost, forward_flops, kv_bytes_per_token
from tts_jax.eval.method import Outcome
from tts_jax.eval.search_methods import prm_potential
from tts_jax.search import LocalAcceptance, Tree, local_acceptance, mcts
from tts_jax.tasks import completion_text, step_oracle, task_tokens
from tts_jax.verifiers import OutcomePotential


def _prm_outcome(models, task):
  """The PRM scoring whole completions: its value at the last step's tag when it reads its
  own format (`models.prm_format`), else at the completion's last token."""
  if getattr(models, "prm_format", None) is not None:
    return prm_potential(models, task, aggregate="last", transform="log")
  return OutcomePotential(models.prm.as_lm(), transform="log")


def _check_fields(verifier: str, **counts) -> None:
  """Raises ValueError for a verifier other than "prm" / "oracle" or a count that is not an
  int >= 1 (named by its keyword)."""
  if verifier not in ("prm", "oracle"):
    raise ValueError(f"verifier must be 'prm' or 'oracle', got {verifier!r}")
  for name, value in counts.items():
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class MCTS:
  """PUCT tree search over reasoning steps. verifier: the node values, the shipped PRM's
  probability at a node's last step ("prm") or the task's exact step checker ("oracle");
  expansions: K steps drawn per expansion; c_puct, backup, page_size, num_pages: as in
  `tts_jax.search.mcts` (num_pages 0: enough pages with no sharing at all)."""

  verifier: Literal["prm", "oracle"] = "prm"
  expansions: int = 4
  c_puct: float = 1.0
  backup: Literal["mean", "max"] = "mean"
  page_size: int = 16
  num_pages: int = 0
  name: str = "MCTS (PRM)"
  timing_phase = "search"

  def verifiers(self) -> tuple[str, ...]:
    return ("prm",) if self.verifier == "prm" else ()

  def check_budgets(self, budgets) -> None:
    _check_fields(self.verifier, expansions=self.expansions, page_size=self.page_size)
    if isinstance(self.num_pages, bool) or not isinstance(self.num_pages, int) or self.num_pages < 0:
      raise ValueError(f"num_pages must be an int >= 0, got {self.num_pages!r}")
    if self.backup not in ("mean", "max"):
      raise ValueError(f"backup must be 'mean' or 'max', got {self.backup!r}")

  def run_engine(self, models, exp, tokens, lengths, keys, budget: int, mesh=None) -> Tree:
    """`budget` simulations for each prompt (int32[B, Tp], one key per prompt)."""
    del mesh  # one device: the tree search has no per-device path yet
    ids = task_tokens(exp.task)
    if self.verifier == "prm":
      potential, pparams = _prm_outcome(models, exp.task), models.prm_params
    else:
      potential, pparams = step_oracle(exp.task, "log"), None
    return mcts(models.policy, models.policy_params, tokens, lengths, keys, potential=potential,
                potential_params=pparams, simulations=budget, expansions=self.expansions,
                max_new_tokens=exp.max_new_tokens, delimiters=ids.steps, stop_tokens=ids.stop, pad_id=ids.pad,
                c_puct=float(self.c_puct), backup=self.backup, proposal=exp.sampling, page_size=self.page_size,
                num_pages=self.num_pages)

  def host_state(self, tree: Tree) -> Tree:
    return tree.replace(cache=None)  # the nodes' KV stays on the device

  def evaluate(self, batch: Batch, index: int) -> dict[int, list[Outcome]]:
    out = {}
    for k in batch.experiment.budgets:
      tree = batch.search(self, index, k)
      prm = batch.models.prm.config if self.verifier == "prm" else None
      rows = []
      for i, problem in enumerate(batch.problems):
        text = completion_text(batch.task, tree.answer_tokens[i, :tree.answer_length[i]])
        rows.append(Outcome(accuracy=float(batch.task.verify(problem, text)), samples=float(k),
                            cost=_tree_cost(batch.models.policy.config, prm, len(batch.prompts[i]), tree, i),
                            extra=(("nodes", float(tree.used[i])), ("kv_pages", float(tree.pages[i])))))
      out[k] = rows
    return out


def _tree_cost(policy, verifier, prompt_len: int, tree: Tree, i: int) -> Cost:
  """Compute of problem i's search: the prompt prefilled once; per expanded node, its last
  token and its children's new tokens decoded for each child (against the prompt's and the
  node's KV); the final rollout's tokens; with a value model, its prompt once and every
  child whole."""
  length, parent = np.asarray(tree.length[i]), np.asarray(tree.parent[i])
  children = np.nonzero(parent >= 0)[0]
  flops = forward_flops(policy, prompt_len)
  kv = kv_bytes_per_token(policy) * prompt_len
  for c in children:
    start = max(int(length[parent[c]]) - 1, 0)  # the parent's last token is fed again for each child
    new = int(length[c]) - start - 1  # the child's own last token waits until it is expanded
    flops += forward_flops(policy, new, context_start=prompt_len + start)
    kv += kv_bytes_per_token(policy) * new
  grown = float(sum(int(length[c] - length[parent[c]]) for c in children))
  rollout = float(tree.decoded[i]) - grown  # the chosen node's completion, if it was unfinished
  if rollout > 0:  # from the chosen node's last token to the answer's last but one
    start = max(float(tree.answer_length[i]) - rollout - 1, 0.0)
    fed = float(tree.answer_length[i]) - 1 - start
    flops += forward_flops(policy, fed, context_start=prompt_len + start)
    kv += kv_bytes_per_token(policy) * fed
  verifier_tokens = 0.0
  if verifier is not None:
    flops += forward_flops(verifier, prompt_len, head_outputs=1)
    for c in children:
      flops += forward_flops(verifier, int(length[c]), context_start=prompt_len, head_outputs=1)
    verifier_tokens = float(prompt_len + length[children].sum())
  return Cost(prompt_tokens=float(prompt_len), generated_tokens=float(tree.decoded[i]),
              verifier_tokens=verifier_tokens, flops=flops, kv_bytes=kv)


@dataclasses.dataclass(frozen=True)
class LocalAcceptanceSearch:
  """N solutions per problem, each step resampled until the verifier accepts it (probability
  = its score), at most `max_tries` draws (LATTS's resample move). verifier: "prm" (the
  shipped PRM's probability at the step's end, read whole) or "oracle" (the exact checker);
  final: "weighted_majority" (answers weighted by their final scores) or "argmax". The cost
  counts what a sequential run does: each step prefills prompt + prefix once, decodes the
  draws up to the accepted one, and the value model reads each of them whole."""

  verifier: Literal["prm", "oracle"] = "prm"
  max_tries: int = 4
  final: Literal["weighted_majority", "argmax"] = "weighted_majority"
  name: str = "local acceptance (PRM)"
  timing_phase = "search"

  def verifiers(self) -> tuple[str, ...]:
    return ("prm",) if self.verifier == "prm" else ()

  def check_budgets(self, budgets) -> None:
    _check_fields(self.verifier, max_tries=self.max_tries)
    if self.final not in ("weighted_majority", "argmax"):
      raise ValueError(f"final must be 'weighted_majority' or 'argmax', got {self.final!r}")

  def run_engine(self, models, exp, tokens, lengths, keys, budget: int, mesh=None) -> LocalAcceptance:
    del mesh  # one device
    ids = task_tokens(exp.task)
    if self.verifier == "prm":
      potential, pparams = _prm_outcome(models, exp.task), models.prm_params
    else:
      potential, pparams = step_oracle(exp.task, "log"), None
    return local_acceptance(models.policy, models.policy_params, tokens, lengths, keys, potential=potential,
                            potential_params=pparams, num_samples=budget, max_tries=self.max_tries,
                            max_new_tokens=exp.max_new_tokens, delimiters=ids.steps, stop_tokens=ids.stop,
                            pad_id=ids.pad, proposal=exp.sampling)

  def host_state(self, out: LocalAcceptance) -> LocalAcceptance:
    return out

  def evaluate(self, batch: Batch, index: int) -> dict[int, list[Outcome]]:
    task, models = batch.task, batch.models
    prm = models.prm.config if self.verifier == "prm" else None
    out = {}
    for k in batch.experiment.budgets:
      run = batch.search(self, index, k)
      rows = []
      for i, problem in enumerate(batch.problems):
        texts = [completion_text(task, run.tokens[i, j, :run.length[i, j]]) for j in range(k)]
        score = np.asarray(run.log_potential[i], np.float64)
        text = _pick(task, texts, score, self.final)
        prompt_len = len(batch.prompts[i])
        steps, prefilled = float(np.sum(run.steps[i])), float(run.prefilled[i])
        decoded, scored = float(run.decoded[i]), float(run.scored[i])
        # per step: one prefill of its context, then its draws on top (mean context per step)
        context = prefilled / max(steps, 1.0)
        flops = steps * forward_flops(models.policy.config, context) + forward_flops(
            models.policy.config, decoded, context_start=context)
        cost = Cost(prompt_tokens=float(prompt_len), generated_tokens=decoded, flops=flops,
                    kv_bytes=float(kv_bytes_per_token(models.policy.config) * (prefilled + decoded)))
        if prm is not None:
          cost = cost + Cost(verifier_tokens=float(prompt_len) + scored,
                             flops=forward_flops(prm, prompt_len, head_outputs=1)
                             + forward_flops(prm, scored, context_start=prompt_len, head_outputs=1))
        rows.append(Outcome(accuracy=float(task.verify(problem, text)), samples=float(k), cost=cost,
                            extra=(("tries_per_step", float(np.sum(run.tries[i])) / max(steps, 1.0)),)))
      out[k] = rows
    return out


def _pick(task, texts: list[str], score: np.ndarray, final: str) -> str:
  if final == "argmax":
    return texts[int(np.argmax(score))]
  votes: dict = {}
  for t, w in zip(texts, np.exp(score)):
    a = task.extract_answer(t)
    if a is not None:
      votes[a] = votes.get(a, 0.0) + float(w)
  if not votes:
    return texts[0]
  best = max(votes, key=votes.get)
  return next(t for t in texts if task.extract_answer(t) == best)
