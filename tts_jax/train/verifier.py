"""Training outcome (ORM) and process (PRM) reward models on a stream of the policy's own samples.

Data come in rounds: round r is `problems_per_round` fresh training problems (indices
r*P .. (r+1)*P - 1 of the task's training stream, never a held-out problem), with
`samples_per_problem` policy samples each, labelled, then used for `epochs_per_round` passes
before round r + 1 is drawn. Nothing is stored: a round is a pure function of (data_seed, r),
so a resumed run draws the same rounds again. ORM label: the exact outcome verifier at the
last token. PRM labels at each step delimiter: "exact" (the task's step checker: every step up
to here right) or Math-Shepherd Monte Carlo labels, `rollouts` completions from the prefix
ending at that step, 1 if any is right ("mc-hard") or the fraction right ("mc-soft"); the last
token carries the outcome. Evaluation: held-out problems of `eval_split` with exact labels:
pooled ROC AUC at the labelled positions and the within-problem AUC of the final score (what
best-of-N and search need: ranking samples of one problem).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tts_jax.config_files import to_dict
from tts_jax.models import pad_prompts
from tts_jax.models.io import load_model, save_model
from tts_jax.models.value import init_value
from tts_jax.tasks.base import task_tokens
from tts_jax.tasks.rollout import complete, task_prompts
from tts_jax.train.loop import run as train_loop
from tts_jax.train.optim import OptimConfig, check_positive_ints, make_optimizer
from tts_jax.verifiers import delimiter_positions, roc_auc, value_logits_chunked, within_group_auc

LABELS = ("exact", "mc-hard", "mc-soft")
WIDTH_BUCKET = 32  # training batches are padded to a multiple of this: a handful of compiled shapes


@dataclasses.dataclass(frozen=True)
class VerifierTrainConfig:
  """One ORM or PRM training run; the value model starts from the policy's weights. Each
  step's batch holds whole problems (batch_size / samples_per_problem of them), so the
  ranking loss sees right and wrong samples of the same problem. written_fraction: the share
  of each round's problems whose samples are written instead of sampled (the right solution
  and one-token-off wrong ones, `build_data`)."""

  kind: Literal["orm", "prm"]
  task: Any
  policy_dir: str
  optim: OptimConfig = OptimConfig(learning_rate=1e-3, warmup_steps=50)
  steps: int = 800
  batch_size: int = 64
  problems_per_round: int = 128
  samples_per_problem: int = 8
  epochs_per_round: int = 1
  labels: Literal["exact", "mc-hard", "mc-soft"] = "exact"
  every_token: bool = False
  written_fraction: float = 0.0
  rollouts: int = 4
  extra_layers: int = 0
  ranking_weight: float = 1.0
  temperature: float = 1.0
  max_new_tokens: int = 96
  eval_split: str = "val"
  eval_problems: int = 200
  eval_samples: int = 8
  seed: int = 0
  data_seed: int = 1
  checkpoint_every: int = 200
  out_dir: str = "runs/verifier"

  def __post_init__(self):
    check_positive_ints(self, ("steps", "batch_size", "problems_per_round", "samples_per_problem",
                               "epochs_per_round", "rollouts", "max_new_tokens", "eval_problems", "eval_samples",
                               "checkpoint_every", "seed", "data_seed", "extra_layers"),
                       allow_zero=("seed", "data_seed", "extra_layers"))
    if self.kind not in ("orm", "prm"):
      raise ValueError(f"VerifierTrainConfig.kind must be 'orm' or 'prm', got {self.kind!r}")
    if self.labels not in LABELS:
      raise ValueError(f"VerifierTrainConfig.labels must be one of {LABELS}, got {self.labels!r}")
    if not self.ranking_weight >= 0 or not self.temperature > 0:
      raise ValueError(f"VerifierTrainConfig: ranking_weight must be >= 0 and temperature > 0, got "
                       f"{self.ranking_weight!r}, {self.temperature!r}")
    if not 0 <= self.written_fraction <= 1:
      raise ValueError(f"VerifierTrainConfig.written_fraction must be in [0, 1], got {self.written_fraction!r}")
    if self.every_token and self.kind == "prm" and self.labels != "exact":
      raise ValueError(f"VerifierTrainConfig.every_token labels every token of a PRM's data with the task's exact "
                       f"token labels; labels={self.labels!r} labels steps only")
    if self.batch_size % self.samples_per_problem:
      raise ValueError(f"VerifierTrainConfig.batch_size ({self.batch_size}) must be a multiple of "
                       f"samples_per_problem ({self.samples_per_problem}): a batch holds whole problems")
    if self.problems_per_round % (self.batch_size // self.samples_per_problem):
      raise ValueError(f"VerifierTrainConfig.problems_per_round ({self.problems_per_round}) must be a multiple of "
                       f"the problems per batch, batch_size / samples_per_problem = "
                       f"{self.batch_size // self.samples_per_problem}")

  @property
  def steps_per_round(self) -> int:
    return self.problems_per_round // (self.batch_size // self.samples_per_problem) * self.epochs_per_round


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


def _pack(seqs, positions, labels, groups, pad) -> ValueData:
  width = -(-max(len(s) for s in seqs) // WIDTH_BUCKET) * WIDTH_BUCKET
  tokens, lengths = pad_prompts(seqs, pad_id=pad, width=width)
  data = ValueData(tokens=tokens, lengths=lengths, weight=np.zeros(tokens.shape, np.float32),
                   target=np.zeros(tokens.shape, np.float32), group=np.asarray(groups, np.int32))
  for i, (pos, lab) in enumerate(zip(positions, labels)):
    data.weight[i, pos] = 1.0
    data.target[i, pos] = lab
  return data


def build_data(config: VerifierTrainConfig, task, lm, params, problems, *, key, num_samples: int,
               labels: str, every_token: bool = False, written: int = 0) -> tuple[ValueData, list]:
  """Samples `num_samples` completions of each problem and labels them (ORM: the outcome;
  PRM: `labels`, "exact" or Math-Shepherd Monte Carlo), at the last token and the step ends,
  or with `every_token` at every completion token (ORM: the outcome everywhere, the
  token-level verifier of Cobbe et al. 2021; PRM: `task.token_labels`, exact prefix
  correctness). The first `written` problems get no policy samples but written ones: half
  the right solution, half `task.wrong_solution`s (hard negatives one token off; the rng is
  seeded by `key`). Returns (data, per-sequence exact step labels)."""
  ids = task_tokens(task)
  tok = task.tokenizer()
  prompts = task_prompts(task, problems)
  completions: list[list[list[int]]] = []  # [problem][sample] completion ids
  texts: list[list[str]] = []
  if written:
    if not hasattr(task, "wrong_solution"):
      raise ValueError(f"written samples need the task's wrong solutions (task.wrong_solution); "
                       f"{type(task).__name__} has none")
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    for p in problems[:written]:
      row = [task.solution(p)] * (num_samples // 2)
      row += [task.wrong_solution(p, rng) for _ in range(num_samples - len(row))]
      texts.append(row)
      completions.append([tok.encode(t, add_special_tokens=False) + [ids.stop[0]] for t in row])
  if written < len(problems):
    comps = complete(task, lm, params, prompts[written:], num_samples=num_samples, key=key,
                     max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                     batch_prompts=min(64, len(prompts) - written))
    texts += comps.texts
    completions += [[comps.tokens[p, j, :comps.lengths[p, j]].tolist() for j in range(num_samples)]
                    for p in range(len(comps.texts))]
  owners = [(p, j) for p in range(len(problems)) for j in range(num_samples)]
  seqs = [list(prompts[p]) + [int(t) for t in completions[p][j]] for p, j in owners]
  correct = np.array([task.verify(problems[p], texts[p][j]) for p, j in owners])
  oracle = [task.step_labels(problems[p], texts[p][j]) for p, j in owners]
  groups = [p for p, _ in owners]
  starts = [len(prompts[p]) for p, _ in owners]
  every = [list(range(b, len(s))) for s, b in zip(seqs, starts)]  # every completion token
  if every_token and config.kind == "orm":
    return _pack(seqs, every, [[float(c)] * len(e) for e, c in zip(every, correct)], groups, ids.pad), oracle
  if config.kind == "orm":
    return _pack(seqs, [[len(s) - 1] for s in seqs], [[float(c)] for c in correct], groups, ids.pad), oracle
  if every_token:
    if not hasattr(task, "token_labels"):
      raise ValueError(f"every_token PRM labels need the task's exact token labels (task.token_labels); "
                       f"{type(task).__name__} has none")
    vocab = task.tokenizer().backend
    targets = [[float(x) for x in task.token_labels(problems[p], [vocab.id_to_token(t) for t in s[b:]])]
               for s, b, (p, _) in zip(seqs, starts, owners)]
    for t, c in zip(targets, correct):
      t[-1] = float(c)  # the last token: the outcome, as everywhere
    return _pack(seqs, every, targets, groups, ids.pad), oracle
  # PRM: every step delimiter, and the final token with the outcome.
  steps_at = [delimiter_positions(s, len(prompts[p]), ids.steps) for s, (p, _) in zip(seqs, owners)]
  if labels == "exact":
    step_labels = [[float(x) for x in o[:len(at)]] for o, at in zip(oracle, steps_at)]
  else:
    step_labels = _monte_carlo_labels(config, task, lm, params, problems, prompts, seqs, owners, steps_at,
                                      jax.random.fold_in(key, 1), soft=labels == "mc-soft")
  positions = [list(at) + [len(s) - 1] for s, at in zip(seqs, steps_at)]
  targets = [list(lab) + [float(c)] for lab, c in zip(step_labels, correct)]
  return _pack(seqs, positions, targets, groups, ids.pad), oracle


def _monte_carlo_labels(config, task, lm, params, problems, prompts, seqs, owners, steps_at, key, soft: bool):
  """Math-Shepherd labels: `config.rollouts` completions from each distinct step prefix; the
  fraction right (soft) or whether any is (hard)."""
  prefixes = {}
  for s, (p, _), at in zip(seqs, owners, steps_at):
    for i in at:
      prefixes.setdefault(tuple(s[:i + 1]), p)
  keys = list(prefixes)
  rolled = complete(task, lm, params, [list(k) for k in keys], num_samples=config.rollouts, key=key,
                    max_new_tokens=config.max_new_tokens, temperature=config.temperature)
  value = {}
  for r, k in enumerate(keys):
    p = prefixes[k]
    prefix_text = task.tokenizer().decode(list(k[len(prompts[p]):]), skip_special_tokens=True)
    ok = [task.verify(problems[p], prefix_text + " " + t) for t in rolled.texts[r]]
    value[k] = float(np.mean(ok)) if soft else float(any(ok))
  return [[value[tuple(s[:i + 1])] for i in at] for s, at in zip(seqs, steps_at)]


class RoundStream:
  """The training batches of a run: step s reads round s // steps_per_round (drawn when first
  needed, the latest one kept), whole problems in a fresh order each epoch. Pure in s."""

  def __init__(self, config: VerifierTrainConfig, task, lm, params):
    self.config, self.task, self.lm, self.params = config, task, lm, params
    self.draw_seconds = 0.0
    self._latest: tuple[int, ValueData] | None = None

  def round(self, r: int) -> ValueData:
    if self._latest is not None and self._latest[0] == r:
      return self._latest[1]
    t0 = time.perf_counter()
    c = self.config
    problems = [self.task.train_problem(c.data_seed, r * c.problems_per_round + i) for i in range(c.problems_per_round)]
    data, _ = build_data(c, self.task, self.lm, self.params, problems,
                         key=jax.random.fold_in(jax.random.key(c.data_seed), r), num_samples=c.samples_per_problem,
                         labels=c.labels, every_token=c.every_token,
                         written=round(c.written_fraction * c.problems_per_round))
    self.draw_seconds += time.perf_counter() - t0
    self._latest = (r, data)
    return data

  def batch(self, step: int) -> dict:
    c = self.config
    r, within = divmod(step, c.steps_per_round)
    data = self.round(r)
    per_batch = c.batch_size // c.samples_per_problem
    batches_per_epoch = c.problems_per_round // per_batch
    epoch, b = divmod(within, batches_per_epoch)
    order = np.random.default_rng([c.seed, r, epoch]).permutation(c.problems_per_round)
    chosen = order[b * per_batch:(b + 1) * per_batch]
    idx = (chosen[:, None] * c.samples_per_problem + np.arange(c.samples_per_problem)).reshape(-1)
    return {"tokens": data.tokens[idx], "lengths": data.lengths[idx], "weight": data.weight[idx],
            "target": data.target[idx], "group": data.group[idx]}


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
  """ROC AUC of the value model's scores at the labelled positions of exactly-labelled data
  (`{kind}_auc`), and the within-problem AUC of its final scores against the outcome."""
  scores = value_logits_chunked(vm, params, data.tokens, data.lengths)
  sel = data.weight > 0
  last = data.lengths - 1
  final, final_y = scores[np.arange(len(last)), last], data.target[np.arange(len(last)), last] > 0.5
  return {f"{kind}_auc": roc_auc(scores[sel], data.target[sel] > 0.5),
          "within_problem_auc": within_group_auc(final, final_y, data.group),
          "positive_rate": float(np.mean(data.target[sel] > 0.5))}


def train_verifier(config: VerifierTrainConfig, stop_after: int | None = None):
  """Runs (or resumes) `config`; returns (value model, params, metrics log)."""
  task = config.task
  lm, policy_params, _ = load_model(config.policy_dir)
  os.makedirs(config.out_dir, exist_ok=True)
  problems = list(task.split(config.eval_split)[:config.eval_problems])
  evald, _ = build_data(config, task, lm, policy_params, problems, key=jax.random.key(10_000 + config.seed),
                        num_samples=config.eval_samples, labels="exact")
  stream = RoundStream(config, task, lm, policy_params)
  vm, params = init_value(lm.config, seed=config.seed, trunk_params=policy_params,
                          extra_layers=config.extra_layers)
  params, log = train_loop(
      params=params, loss_fn=value_loss(vm, config.ranking_weight), batch_fn=stream.batch,
      optimizer=make_optimizer(config.optim, config.steps), steps=config.steps,
      checkpoint_dir=config.out_dir, checkpoint_every=config.checkpoint_every,
      eval_fn=lambda p, s: {**evaluate_verifier(config.kind, vm, p, evald), "data_s": round(stream.draw_seconds, 1)},
      eval_every=config.checkpoint_every, stop_after=stop_after, desc=f"{config.kind}[{task.name}]",
      config=to_dict(config))
  if stop_after is None or stop_after >= config.steps:
    rounds = -(-config.steps // config.steps_per_round)
    save_model(os.path.join(config.out_dir, "model"), vm.config, params, kind=config.kind,
               info={"task": task.name, "steps": config.steps,
                     "train_sequences": rounds * config.problems_per_round * config.samples_per_problem,
                     "metrics": log[-1] if log else {}})
  return vm, params, log
