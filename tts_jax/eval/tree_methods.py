"""Monte Carlo tree search as an experiment method (`tts_jax.search.mcts`).

Budget N is the number of simulations per problem; each expansion draws `expansions` candidate
next steps. The answer is the tree's chosen node (`Tree.answer`: the most-visited path, else
the best finished node). The cost counts what the search did: each expansion prefills the
prompt plus the expanded node's tokens once, decodes its K children's new step, and the value
model reads each child whole (`OutcomePotential`; none with the exact checker).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from tts_jax.eval.batch import Batch
from tts_jax.eval.cost import Cost, forward_flops, kv_bytes_per_token
from tts_jax.eval.method import Outcome
from tts_jax.search import Tree, mcts
from tts_jax.tasks import completion_text, step_oracle, task_tokens
from tts_jax.verifiers import OutcomePotential


@dataclasses.dataclass(frozen=True)
class MCTS:
  """PUCT tree search over reasoning steps. verifier: the node values, the shipped PRM's
  probability at a node's last step ("prm") or the task's exact step checker ("oracle");
  expansions: K steps drawn per expansion; c_puct, backup: as in `tts_jax.search.mcts`."""

  verifier: Literal["prm", "oracle"] = "prm"
  expansions: int = 4
  c_puct: float = 1.0
  backup: Literal["mean", "max"] = "mean"
  name: str = "MCTS (PRM)"
  timing_phase = "search"

  def verifiers(self) -> tuple[str, ...]:
    return ("prm",) if self.verifier == "prm" else ()

  def check_budgets(self, budgets) -> None:
    if self.verifier not in ("prm", "oracle"):
      raise ValueError(f"verifier must be 'prm' or 'oracle', got {self.verifier!r}")
    if isinstance(self.expansions, bool) or not isinstance(self.expansions, int) or self.expansions < 1:
      raise ValueError(f"expansions must be an int >= 1, got {self.expansions!r}")
    if self.backup not in ("mean", "max"):
      raise ValueError(f"backup must be 'mean' or 'max', got {self.backup!r}")

  def run_engine(self, models, exp, tokens, lengths, keys, budget: int, mesh=None) -> Tree:
    """`budget` simulations for each prompt (int32[B, Tp], one key per prompt)."""
    del mesh  # one device: the tree search has no per-device path yet
    ids = task_tokens(exp.task)
    if self.verifier == "prm":
      potential, pparams = OutcomePotential(models.prm.as_lm(), transform="log"), models.prm_params
    else:
      potential, pparams = step_oracle(exp.task, "log"), None
    return mcts(models.policy, models.policy_params, tokens, lengths, keys, potential=potential,
                potential_params=pparams, simulations=budget, expansions=self.expansions,
                max_new_tokens=exp.max_new_tokens, delimiters=ids.steps, stop_tokens=ids.stop, pad_id=ids.pad,
                c_puct=float(self.c_puct), backup=self.backup, proposal=exp.sampling)

  def host_state(self, tree: Tree) -> Tree:
    return tree

  def evaluate(self, batch: Batch, index: int) -> dict[int, list[Outcome]]:
    out = {}
    for k in batch.experiment.budgets:
      tree = batch.search(self, index, k)
      pick = np.asarray(tree.answer())
      prm = batch.models.prm.config if self.verifier == "prm" else None
      rows = []
      for i, problem in enumerate(batch.problems):
        text = completion_text(batch.task, tree.tokens[i, pick[i], :tree.length[i, pick[i]]])
        rows.append(Outcome(accuracy=float(batch.task.verify(problem, text)), samples=float(k),
                            cost=_tree_cost(batch.models.policy.config, prm, len(batch.prompts[i]), tree, i),
                            extra=(("nodes", float(tree.used[i])),)))
      out[k] = rows
    return out


def _tree_cost(policy, verifier, prompt_len: int, tree: Tree, i: int) -> Cost:
  """Compute of problem i's search: per expanded node, one prefill of prompt + node and its
  children's new tokens decoded; with a value model, its prompt once and every child whole."""
  length, parent = np.asarray(tree.length[i]), np.asarray(tree.parent[i])
  children = np.nonzero(parent >= 0)[0]
  expanded = np.nonzero(np.asarray(tree.first_child[i]) >= 0)[0]
  flops, kv = 0.0, 0.0
  for node in expanded:
    context = prompt_len + int(length[node])
    flops += forward_flops(policy, context)
    kv += kv_bytes_per_token(policy) * context
    for c in children[parent[children] == node]:
      new = int(length[c] - length[node])
      flops += forward_flops(policy, new, context_start=context)
      kv += kv_bytes_per_token(policy) * new
  verifier_tokens = 0.0
  if verifier is not None:
    flops += forward_flops(verifier, prompt_len, head_outputs=1)
    for c in children:
      flops += forward_flops(verifier, int(length[c]), context_start=prompt_len, head_outputs=1)
    verifier_tokens = float(prompt_len + length[children].sum())
  return Cost(prompt_tokens=float(prompt_len), generated_tokens=float(tree.decoded[i]),
              verifier_tokens=verifier_tokens, flops=flops, kv_bytes=kv)
