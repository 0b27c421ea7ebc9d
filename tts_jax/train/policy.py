"""Training a policy LM on a task's solutions: next-token loss on solution tokens."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tts_jax.config_files import to_dict
from tts_jax.models import ModelConfig, init, pad_prompts
from tts_jax.models.io import save_model
from tts_jax.tasks import PAD, complete, grade, task_prompts
from tts_jax.tasks.base import example_ids
from tts_jax.train.loop import run as train_loop
from tts_jax.train.optim import OptimConfig, check_positive_ints, make_optimizer


@dataclasses.dataclass(frozen=True)
class PolicyTrainConfig:
  """One policy training run.

  task: a task dataclass (e.g. ModChain()). model: the architecture (vocab_size must
  equal the task tokenizer's). Batches of `batch_size` fresh problems of the train
  stream `seed`, padded to `max_len`. Every `eval_every` steps: pass@1 from
  `eval_samples` samples on each of the first `eval_problems` "val" problems.
  The final model is written to `out_dir`/model (config.json + model.safetensors).
  """

  task: Any
  model: ModelConfig
  optim: OptimConfig = OptimConfig()
  steps: int = 2000
  batch_size: int = 64
  max_len: int = 128
  seed: int = 0
  eval_every: int = 500
  eval_problems: int = 200
  eval_samples: int = 4
  checkpoint_every: int = 250
  out_dir: str = "runs/policy"

  def __post_init__(self):
    check_positive_ints(self, ("steps", "batch_size", "max_len", "eval_every", "eval_problems", "eval_samples",
                               "checkpoint_every", "seed"), allow_zero=("seed", "eval_every"))  # eval_every 0: never


def make_batch(task, step: int, batch_size: int, max_len: int, seed: int) -> dict:
  """The batch of `step`: a pure function of its arguments.

  Returns {"tokens": int32[B, L], "lengths": int32[B], "loss_mask": float32[B, L-1]}, L the
  longest example rounded up to a multiple of 16 (at most max_len), where
  loss_mask marks the positions whose next token is a solution token (or EOS).
  """
  pad = task.tokenizer().token_to_id(PAD)
  examples = [example_ids(task, task.train_problem(seed, step * batch_size + i)) for i in range(batch_size)]
  longest = max(len(ids) for ids, _ in examples)
  if longest > max_len:
    raise ValueError(f"training example of {longest} tokens exceeds max_len={max_len}")
  tokens, lengths = pad_prompts([ids for ids, _ in examples], pad_id=pad)
  tokens = tokens[:, :max_len]  # few distinct shapes, little padding
  mask = np.zeros((batch_size, tokens.shape[1] - 1), np.float32)
  for i, (ids, n_prompt) in enumerate(examples):
    mask[i, n_prompt - 1:len(ids) - 1] = 1.0
  return {"tokens": tokens, "lengths": lengths, "loss_mask": mask}


def task_knobs(task) -> dict:
  """The task's scalar difficulty knobs (enough to rebuild it with `get_task`)."""
  return {f.name: getattr(task, f.name) for f in dataclasses.fields(task)
          if f.name != "name" and isinstance(getattr(task, f.name), (int, float, str))}


def policy_loss(lm):
  def loss_fn(params, batch):
    logits = lm.forward(params, batch["tokens"], batch["lengths"])[:, :-1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tokens"][:, 1:])
    m = batch["loss_mask"]
    loss = jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1.0)
    acc = jnp.sum((jnp.argmax(logits, -1) == batch["tokens"][:, 1:]) * m) / jnp.maximum(jnp.sum(m), 1.0)
    return loss, {"token_acc": acc}
  return loss_fn


def evaluate_policy(task, lm, params, problems, *, num_samples: int, max_new_tokens: int, key,
                    temperature: float = 1.0) -> np.ndarray:
  """bool[P, num_samples]: whether each sampled completion is correct."""
  comps = complete(task, lm, params, task_prompts(task, problems), num_samples=num_samples, key=key,
                   max_new_tokens=max_new_tokens, temperature=temperature)
  return grade(task, problems, comps)


def train_policy(config: PolicyTrainConfig, stop_after: int | None = None) -> tuple[Any, dict, list[dict]]:
  """Runs (or resumes) `config`; returns (lm, params, metrics log)."""
  task = config.task
  vocab = task.tokenizer().vocab_size
  if config.model.vocab_size != vocab:
    raise ValueError(f"model.vocab_size={config.model.vocab_size} but the {task.name} tokenizer has {vocab} tokens")
  lm, params = init(config.model, seed=config.seed)
  val = task.split("val")[:config.eval_problems]
  budget = config.max_len - max(len(p) for p in task_prompts(task, val))

  def eval_fn(p, step):
    correct = evaluate_policy(task, lm, p, val, num_samples=config.eval_samples,
                              max_new_tokens=budget, key=jax.random.key(step))
    return {"val_pass@1": float(np.mean(correct))}  # pass@1 = the fraction correct

  params, log = train_loop(
      params=params, loss_fn=policy_loss(lm),
      batch_fn=lambda s: make_batch(task, s, config.batch_size, config.max_len, config.seed),
      optimizer=make_optimizer(config.optim, config.steps), steps=config.steps,
      checkpoint_dir=config.out_dir, checkpoint_every=config.checkpoint_every, eval_fn=eval_fn,
      eval_every=config.eval_every, stop_after=stop_after, desc=f"policy[{task.name}]",
      config=to_dict(config))
  if stop_after is None or stop_after >= config.steps:
    save_model(os.path.join(config.out_dir, "model"), config.model, params, kind="policy",
               info={"task": task.name, "task_knobs": task_knobs(task), "steps": config.steps,
                     "metrics": log[-1] if log else {}})
  return lm, params, log
