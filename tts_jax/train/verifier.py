"""Training outcome (ORM) and process (PRM) reward models on the policy's own samples.

Data: the policy samples `samples_per_problem` completions of `num_problems`
fresh training problems. ORM label: the exact outcome verifier, at the last
token. PRM labels (Math-Shepherd): for each step (a `;` token) the policy rolls
out `rollouts` completions from the prefix ending at that step; the label is 1
if any rollout is correct ("hard") or the fraction correct ("soft"); the final
token is labelled by the outcome verifier. Evaluation uses the exact verifiers on
held-out "val" problems: ROC AUC of ORM scores against outcomes, and of PRM step
scores against the oracle's step correctness.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tts_jax.config_files import to_dict
from tts_jax.models import pad_prompts
from tts_jax.models.io import load_model, save_model
from tts_jax.models.value import init_value
from tts_jax.tasks.base import PAD, STEP
from tts_jax.tasks.rollout import complete, grade, task_prompts
from tts_jax.train.loop import run as train_loop
from tts_jax.train.optim import OptimConfig, check_positive_ints, make_optimizer
from tts_jax.verifiers import delimiter_positions, roc_auc, value_logits_chunked, within_group_auc


@dataclasses.dataclass(frozen=True)
class VerifierTrainConfig:
  """One ORM or PRM training run; the value model starts from the policy's weights."""

  kind: Literal["orm", "prm"]
  task: Any
  policy_dir: str
  optim: OptimConfig = OptimConfig(learning_rate=1e-3, warmup_steps=50)
  steps: int = 800
  batch_size: int = 64
  num_problems: int = 1024
  samples_per_problem: int = 4
  rollouts: int = 4
  label: Literal["hard", "soft"] = "hard"
  ranking_weight: float = 1.0
  temperature: float = 1.0
  max_new_tokens: int = 80
  eval_problems: int = 200
  eval_samples: int = 4
  seed: int = 0
  data_seed: int = 1
  checkpoint_every: int = 200
  out_dir: str = "runs/verifier"

  def __post_init__(self):
    check_positive_ints(self, ("steps", "batch_size", "num_problems", "samples_per_problem", "rollouts",
                               "max_new_tokens", "eval_problems", "eval_samples", "checkpoint_every", "seed",
                               "data_seed"), allow_zero=("seed", "data_seed"))
    if self.kind not in ("orm", "prm"):
      raise ValueError(f"VerifierTrainConfig.kind must be 'orm' or 'prm', got {self.kind!r}")
    if self.label not in ("hard", "soft"):
      raise ValueError(f"VerifierTrainConfig.label must be 'hard' or 'soft', got {self.label!r}")
    if not self.ranking_weight >= 0 or not self.temperature > 0:
      raise ValueError(f"VerifierTrainConfig: ranking_weight must be >= 0 and temperature > 0, got "
                       f"{self.ranking_weight!r}, {self.temperature!r}")


@dataclasses.dataclass
class ValueData:
  """tokens int32[M, L] (prompt + completion, right-padded), lengths int32[M],
  weight float32[M, L] (1 at scored positions), target float32[M, L] (labels there),
  group int32[M] (the problem each sequence answers)."""

  tokens: np.ndarray
  lengths: np.ndarray
  weight: np.ndarray
  target: np.ndarray
  group: np.ndarray


def _sequences(prompts, comps):
  seqs = []
  for p, (toks, lens) in enumerate(zip(comps.tokens, comps.lengths)):
    for n in range(toks.shape[0]):
      seqs.append(list(prompts[p]) + [int(t) for t in toks[n, :lens[n]]])
  return seqs


def _pack(seqs, positions, labels, groups, pad) -> ValueData:
  tokens, lengths = pad_prompts(seqs, pad_id=pad)
  data = ValueData(tokens=tokens, lengths=lengths, weight=np.zeros(tokens.shape, np.float32),
                   target=np.zeros(tokens.shape, np.float32), group=np.asarray(groups, np.int32))
  for i, (pos, lab) in enumerate(zip(positions, labels)):
    data.weight[i, pos] = 1.0
    data.target[i, pos] = lab
  return data


def build_data(config: VerifierTrainConfig, task, lm, params, problems, *, key, rollouts: bool) -> tuple[ValueData, list]:
  """Samples completions and labels them (ORM: outcome; PRM: MC rollouts, or the exact oracle
  when `rollouts` is False). Returns (data, per-sequence oracle step labels)."""
  tok = task.tokenizer()
  step_id, pad = tok.token_to_id(STEP), tok.token_to_id(PAD)
  prompts = task_prompts(task, problems)
  n = config.samples_per_problem if rollouts else config.eval_samples
  comps = complete(task, lm, params, prompts, num_samples=n, key=key, max_new_tokens=config.max_new_tokens,
                   temperature=config.temperature)
  correct = grade(task, problems, comps).reshape(-1)
  seqs = _sequences(prompts, comps)
  owners = [(p, j) for p in range(len(problems)) for j in range(n)]
  oracle = [task.step_labels(problems[p], comps.texts[p][j]) for p, j in owners]
  positions, labels = [], []
  if config.kind == "orm":
    positions = [[len(s) - 1] for s in seqs]
    labels = [[float(c)] for c in correct]
    return _pack(seqs, positions, labels, [p for p, _ in owners], pad), oracle
  # PRM: score every step delimiter, and the final token with the outcome.
  steps_at = [delimiter_positions(s, len(prompts[p]), (step_id,)) for s, (p, _) in zip(seqs, owners)]
  if rollouts:
    prefixes = {}
    for s, (p, _), at in zip(seqs, owners, steps_at):
      for i in at:
        prefixes.setdefault(tuple(s[:i + 1]), p)
    keys = list(prefixes)
    rolled = complete(task, lm, params, [list(k) for k in keys], num_samples=config.rollouts,
                      key=jax.random.fold_in(key, 1), max_new_tokens=config.max_new_tokens,
                      temperature=config.temperature)
    value = {}
    for r, k in enumerate(keys):
      prob = problems[prefixes[k]]
      prefix_text = task.tokenizer().decode(list(k[len(prompts[prefixes[k]]):]), skip_special_tokens=True)
      ok = [task.verify(prob, prefix_text + " " + t) for t in rolled.texts[r]]
      value[k] = float(any(ok)) if config.label == "hard" else float(np.mean(ok))
    step_labels = [[value[tuple(s[:i + 1])] for i in at] for s, at in zip(seqs, steps_at)]
  else:
    step_labels = [[float(x) for x in o[:len(at)]] for o, at in zip(oracle, steps_at)]
  for s, at, lab, c in zip(seqs, steps_at, step_labels, correct):
    positions.append(list(at) + [len(s) - 1])
    labels.append(list(lab) + [float(c)])
  return _pack(seqs, positions, labels, [p for p, _ in owners], pad), oracle


def value_loss(vm, ranking_weight: float = 0.0):
  """BCE at the labelled positions, plus `ranking_weight` x a pairwise logistic loss between
  the final-token scores of right and wrong samples of the same problem (the signal best-of-N
  needs: telling apart samples of one problem, not easy problems from hard ones)."""
  def loss_fn(params, batch):
    logits = vm.values(params, batch["tokens"], batch["lengths"])
    w = batch["weight"]
    bce = optax.sigmoid_binary_cross_entropy(logits, batch["target"])
    loss = jnp.sum(bce * w) / jnp.maximum(jnp.sum(w), 1.0)
    last = batch["lengths"] - 1
    s = jnp.take_along_axis(logits, last[:, None], axis=1)[:, 0]
    y = jnp.take_along_axis(batch["target"], last[:, None], axis=1)[:, 0] > 0.5
    pair = (batch["group"][:, None] == batch["group"][None, :]) & y[:, None] & ~y[None, :]
    rank = jnp.sum(jnp.where(pair, jax.nn.softplus(-(s[:, None] - s[None, :])), 0.0)) / jnp.maximum(pair.sum(), 1)
    return loss + ranking_weight * rank, {"bce": loss, "rank": rank}
  return loss_fn


def evaluate_verifier(kind: str, vm, params, data: ValueData) -> dict:
  """ROC AUC of the value model's scores at the labelled positions of exactly-labelled data."""
  scores = value_logits_chunked(vm, params, data.tokens, data.lengths)
  sel = data.weight > 0
  last = data.lengths - 1
  final, final_y = scores[np.arange(len(last)), last], data.target[np.arange(len(last)), last] > 0.5
  return {f"{kind}_auc": roc_auc(scores[sel], data.target[sel] > 0.5),
          "outcome_auc_within_problem": within_group_auc(final, final_y, data.group),
          "positive_rate": float(np.mean(data.target[sel] > 0.5))}


_DATA_FIELDS = ("kind", "task", "policy_dir", "num_problems", "samples_per_problem", "rollouts", "label",
                "temperature", "max_new_tokens", "eval_problems", "eval_samples", "seed", "data_seed")


def train_verifier(config: VerifierTrainConfig, stop_after: int | None = None):
  """Runs (or resumes) `config`; returns (value model, params, metrics log)."""
  task = config.task
  lm, policy_params, _ = load_model(config.policy_dir)
  os.makedirs(config.out_dir, exist_ok=True)
  cache = os.path.join(config.out_dir, "data.npz")
  # The data depend on these fields only; a cache built under other values is rebuilt.
  key = json.dumps({k: v for k, v in to_dict(config).items() if k in _DATA_FIELDS}, sort_keys=True)
  cached = None
  if os.path.isfile(cache):
    try:
      with np.load(cache) as z:
        if "key" in z and str(z["key"]) == key:
          fields = [f.name for f in dataclasses.fields(ValueData)]
          cached = (ValueData(**{k: z["train_" + k] for k in fields}), ValueData(**{k: z["eval_" + k] for k in fields}))
    except (OSError, ValueError, KeyError, EOFError):  # a torn file from an old, non-atomic write
      cached = None
  if cached is not None:
    train, evald = cached
  else:
    problems = [task.train_problem(config.data_seed, i) for i in range(config.num_problems)]
    train, _ = build_data(config, task, lm, policy_params, problems, key=jax.random.key(config.data_seed),
                          rollouts=True)
    val = list(task.split("val")[:config.eval_problems])
    evald, _ = build_data(config, task, lm, policy_params, val, key=jax.random.key(10_000 + config.seed),
                          rollouts=False)
    tmp = f"{cache}.tmp"
    with open(tmp, "wb") as fh:  # atomic: write, then rename
      np.savez(fh, key=np.asarray(key), **{f"train_{k}": v for k, v in dataclasses.asdict(train).items()},
               **{f"eval_{k}": v for k, v in dataclasses.asdict(evald).items()})
    os.replace(tmp, cache)
  vm, params = init_value(lm.config, seed=config.seed, trunk_params=policy_params)
  m = len(train.tokens)

  groups = np.unique(train.group)
  rows_of = {g: np.flatnonzero(train.group == g) for g in groups}
  per_batch = max(1, config.batch_size // config.samples_per_problem)

  def batch_fn(step):
    # Whole problems per batch (all their samples), so the ranking loss sees rivals.
    epoch, i = divmod(step * per_batch, len(groups))
    order = np.random.default_rng([config.seed, epoch]).permutation(len(groups))
    chosen = groups[order[np.arange(i, i + per_batch) % len(groups)]]
    idx = np.concatenate([rows_of[g] for g in chosen])[:config.batch_size]
    idx = np.resize(idx, config.batch_size)
    return {"tokens": train.tokens[idx], "lengths": train.lengths[idx], "weight": train.weight[idx],
            "target": train.target[idx], "group": train.group[idx]}

  params, log = train_loop(
      params=params, loss_fn=value_loss(vm, config.ranking_weight), batch_fn=batch_fn,
      optimizer=make_optimizer(config.optim, config.steps), steps=config.steps,
      checkpoint_dir=config.out_dir, checkpoint_every=config.checkpoint_every,
      eval_fn=lambda p, s: evaluate_verifier(config.kind, vm, p, evald), eval_every=config.checkpoint_every,
      stop_after=stop_after, desc=f"{config.kind}[{task.name}]",
      config=to_dict(config))
  if stop_after is None or stop_after >= config.steps:
    save_model(os.path.join(config.out_dir, "model"), lm.config, params, kind=config.kind,
               info={"task": task.name, "steps": config.steps, "train_sequences": m,
                     "metrics": log[-1] if log else {}})
  return vm, params, log
