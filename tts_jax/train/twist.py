"""A twist for a task's policy: a supervised warm start on the policy's own samples, then
contrastive twist learning (CTL, Zhao et al. 2024), on streams of training problems, and the
measures that say whether it helps.

    tts-jax train-defaults modchain          # runs experiments/train/modchain_twist.py too
    twist, params, log = train_twist(config)  # a TwistTrainConfig (resumes)
    twist, params = twist_from_policy(models.policy, models.policy_params)   # log psi = 0: untwisted
    report = twist_report(task, models, twist, params, problems)            # ESS, log Z bounds

The target is sigma(x) proportional to p(x) phi(x), phi the task's exact checker scored on
finished generations (`step_oracle(task, outcome_only=True)`: 1 - eps if every step and
the answer are right, else eps), with no step potentials: the twist alone guides the
particles between steps. The optimal twist psi*_t = E_p[phi | x_{1:t}] is then
eps + (1 - 2 eps) P(right | x_{1:t}), the policy's own chance of finishing right. CTL's
intermediate targets are p(x_{1:t}) psi_t(x_{1:t}) (`tts_jax.smc.twists.ctl_loss`), which
is exactly what the engine runs with an outcome-only potential.

The twist model is the policy's architecture started from the policy's weights with a zero
output head; all of it is trained. Its outputs z are read as
log psi = log(eps + 2 (1 - eps) sigmoid(z)) (`BoundedTwist`): in [log eps, log 2], about the
range of the optimal twist, and 0 (untwisted SMC) at z = 0.

Warm start: soft-label binary cross-entropy of sigmoid(z_t) against
y = (1 - 2 eps) / (2 (1 - eps)) * [the sample ended right], at every generated token (the
output before token t, read at x_t); its minimiser is sigmoid(z_t) = E[y | x_{1:t}], i.e.
psi = psi* exactly (outcome regression, the token-level verifier of Cobbe et al. 2021 read
as a twist). CTL then refines it on the twisted proposal's own particles.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tts_jax.config_files import to_dict
from tts_jax.models import pad_prompts
from tts_jax.models.io import load_model, save_model
from tts_jax.models.twist_head import BoundedTwist
from tts_jax.smc import SMCConfig, particle_filter, run_smc
from tts_jax.smc.bounds import log_z_bounds
from tts_jax.smc.resample import Resample
from tts_jax.smc.twists import ctl_loss
from tts_jax.tasks.base import prompt_ids, task_tokens
from tts_jax.tasks.oracle import step_oracle
from tts_jax.train.loop import run as train_loop
from tts_jax.train.optim import OptimConfig, check_positive_ints, make_optimizer
from tts_jax.train.verifier import RoundStream, VerifierTrainConfig

PROMPT_WIDTH = 64
__all__ = ["BoundedTwist", "TwistTrainConfig", "train_twist", "twist_from_policy", "twist_regression_loss",
           "exact_target_samples", "twist_report", "twist_config", "outcome_potential"]


def outcome_potential(task, eps: float = 0.01):
  """The target's phi: the task's exact checker on finished generations only (log r)."""
  return step_oracle(task, "log", eps=eps, outcome_only=True)


@dataclasses.dataclass(frozen=True)
class TwistTrainConfig:
  """One task twist: `steps` supervised warm-start steps (batches of `batch_size` policy
  samples, `samples_per_problem` per problem, rounds of `problems_per_round` fresh training
  problems as in `tts_jax.train.verifier.RoundStream`), then `ctl_steps` CTL steps (each one
  importance-sampling run of `ctl_particles` per prompt on `ctl_prompts` fresh training
  problems). Both phases checkpoint under `out_dir` and resume. The report compares
  untwisted and twisted SMC on `eval_problems` problems of `eval_split` with
  `eval_particles` particles (eval_problems=0: no report); the model goes to
  `out_dir`/model (kind "twist")."""

  task: Any
  policy_dir: str
  eps: float = 0.01
  optim: OptimConfig = OptimConfig(learning_rate=1e-3, warmup_steps=20)
  steps: int = 300
  batch_size: int = 64
  problems_per_round: int = 128
  samples_per_problem: int = 8
  ctl_steps: int = 50
  ctl_prompts: int = 8
  ctl_particles: int = 32
  ctl_learning_rate: float = 1e-4
  max_new_tokens: int = 96
  eval_split: str = "hard"
  eval_problems: int = 32
  eval_particles: int = 16
  seed: int = 0
  data_seed: int = 2
  checkpoint_every: int = 100
  out_dir: str = "runs/twist"

  def __post_init__(self):
    check_positive_ints(self, ("steps", "batch_size", "problems_per_round", "samples_per_problem", "ctl_steps",
                               "ctl_prompts", "ctl_particles", "max_new_tokens", "eval_problems", "eval_particles",
                               "checkpoint_every", "seed", "data_seed"),
                        allow_zero=("steps", "ctl_steps", "eval_problems", "seed", "data_seed"))
    if not 0 < self.eps < 0.5:
      raise ValueError(f"TwistTrainConfig.eps must be in (0, 0.5), got {self.eps!r}")
    if not self.ctl_learning_rate > 0:
      raise ValueError(f"TwistTrainConfig.ctl_learning_rate must be > 0, got {self.ctl_learning_rate!r}")
    self.supervised_stream_config()  # batch / round sizes checked as the verifier trainer checks them

  def supervised_stream_config(self) -> VerifierTrainConfig:
    """The warm start's data: the outcome at every completion token (an every-token ORM stream)."""
    return VerifierTrainConfig(kind="orm", task=self.task, policy_dir=self.policy_dir, every_token=True,
                               steps=max(self.steps, 1), batch_size=self.batch_size,
                               problems_per_round=self.problems_per_round,
                               samples_per_problem=self.samples_per_problem, max_new_tokens=self.max_new_tokens,
                               seed=self.seed, data_seed=self.data_seed)


def twist_regression_loss(twist: BoundedTwist):
  """(params, batch) -> (loss, metrics): soft-label BCE of sigmoid(z) at every labelled token
  against y = (1 - 2 eps) / (2 (1 - eps)) * outcome, z the twist output before the token read
  at the token (module docstring). batch: tokens int32[M, L] (prompt + completion,
  right-padded), weight / target float32[M, L] (1 / the outcome at completion tokens).
  metrics: "bce" (the loss) and "psi_right" / "psi_wrong", the mean psi at the labelled
  tokens of right / wrong samples."""
  scale = (1 - 2 * twist.eps) / (2 * (1 - twist.eps))

  def loss_fn(params, batch):
    z = twist.lm.forward(params, batch["tokens"])  # [M, L, V]
    nxt = batch["tokens"][:, 1:]
    z_t = jnp.take_along_axis(z[:, :-1], nxt[..., None], axis=-1)[..., 0].astype(jnp.float32)  # [M, L-1]
    w, r = batch["weight"][:, 1:], batch["target"][:, 1:]
    bce = optax.sigmoid_binary_cross_entropy(z_t, scale * r)
    loss = jnp.sum(bce * w) / jnp.maximum(jnp.sum(w), 1.0)
    psi = jnp.exp(twist.log_psi(z_t))
    mean = lambda m: jnp.sum(psi * m) / jnp.maximum(jnp.sum(m), 1.0)  # noqa: E731
    return loss, {"bce": loss, "psi_right": mean(w * r), "psi_wrong": mean(w * (1 - r))}
  return loss_fn


def ctl_training_loss(task, policy, policy_params, twist: BoundedTwist, cfg: SMCConfig):
  """(params, batch) -> (loss, metrics) of one CTL step: an importance-sampling run of `cfg`
  under the current twist (no gradient through it) on batch "tokens" / "lengths" (prompts)
  with PRNG key data batch["key"], then `ctl_loss`; metrics: "ess", the mean normalized ESS
  of the run's final weights."""
  potential = outcome_potential(task, twist.eps)

  def loss_fn(params, batch):
    key = jax.random.wrap_key_data(batch["key"])
    parts = run_smc(policy, policy_params, batch["tokens"], batch["lengths"], key, cfg=cfg, potential=potential,
                    twist=twist, twist_params=jax.lax.stop_gradient(params))
    loss = ctl_loss(twist, params, batch["tokens"], batch["lengths"], parts)
    ess = jnp.mean(1.0 / jnp.sum(jax.nn.softmax(parts.log_weights, axis=1) ** 2, axis=1)) / cfg.num_particles
    return loss, {"ess": ess}
  return loss_fn


def train_twist(config: TwistTrainConfig, stop_after: int | None = None):
  """Runs (or resumes) `config`: the warm start in `out_dir`/supervised, CTL in `out_dir`/ctl,
  then `twist_report` and the model in `out_dir`/model. stop_after: stop once the run's
  step (warm start, then CTL) reaches it (simulates a crash in tests). Returns (twist,
  params, metrics log of both phases, each record with its "phase")."""
  task = config.task
  policy, policy_params, _ = load_model(config.policy_dir)
  twist, params = twist_from_policy(policy, policy_params, config.eps)
  run_config = to_dict(config)
  log = []
  if config.steps:
    stream = RoundStream(config.supervised_stream_config(), task, policy, policy_params)
    params, sup = train_loop(
        params=params, loss_fn=twist_regression_loss(twist), batch_fn=stream.batch,
        optimizer=make_optimizer(config.optim, config.steps), steps=config.steps,
        checkpoint_dir=os.path.join(config.out_dir, "supervised"), checkpoint_every=config.checkpoint_every,
        stop_after=stop_after, desc=f"twist warm start[{task.name}]", config=run_config)
    log += [{"phase": "supervised", **r} for r in sup]
    if stop_after is not None and stop_after <= config.steps:
      return twist, params, log
  if config.ctl_steps:
    cfg = dataclasses.replace(twist_config(task, config.ctl_particles, config.max_new_tokens),
                              select=Resample(ess_threshold=0.0))
    root = jax.random.key(config.seed + 1)

    def batch(step):
      problems = [task.train_problem(config.data_seed + 1, step * config.ctl_prompts + j)
                  for j in range(config.ctl_prompts)]
      toks, lens = _prompts(task, problems)
      return {"tokens": toks, "lengths": lens, "key": jax.random.key_data(jax.random.fold_in(root, step))}

    params, ctl = train_loop(
        params=params, loss_fn=ctl_training_loss(task, policy, policy_params, twist, cfg), batch_fn=batch,
        optimizer=optax.adam(config.ctl_learning_rate), steps=config.ctl_steps,
        checkpoint_dir=os.path.join(config.out_dir, "ctl"), checkpoint_every=config.checkpoint_every,
        stop_after=None if stop_after is None else stop_after - config.steps, desc=f"twist CTL[{task.name}]",
        config=run_config)
    log += [{"phase": "ctl", **r} for r in ctl]
    if stop_after is not None and stop_after < config.steps + config.ctl_steps:
      return twist, params, log
  info = {"task": task.name, "eps": config.eps, "steps": config.steps, "ctl_steps": config.ctl_steps}
  if config.eval_problems:
    from tts_jax.tasks.shipped import DefaultModels  # noqa: PLC0415
    models = DefaultModels(task=task, policy=policy, policy_params=policy_params, orm=None, orm_params=None,
                           prm=None, prm_params=None, report={})
    problems = list(task.split(config.eval_split)[:config.eval_problems])
    report = twist_report(task, models, twist, params, problems, num_particles=config.eval_particles,
                          max_new_tokens=config.max_new_tokens, seed=config.seed)
    info["report"] = {"split": config.eval_split, "problems": len(problems), "particles": config.eval_particles,
                      **report}
  save_model(os.path.join(config.out_dir, "model"), policy.config, params, kind="twist", info=info)
  return twist, params, log


def twist_from_policy(policy, policy_params, eps: float = 0.01):
  """(`BoundedTwist` of the policy's model, params): the policy's weights with the output
  head zeroed, so log psi = 0 for every next token (untwisted SMC)."""
  params = jax.tree.map(jnp.array, policy_params)
  params["lm_head"] = jnp.zeros_like(params["lm_head"])
  return BoundedTwist(policy, eps), params


def twist_config(task, num_particles: int, max_new_tokens: int, ess_threshold: float = 0.5) -> SMCConfig:
  """Incremental SMC for p(x) phi(x) with the task's ids (systematic resampling at ESS < threshold)."""
  ids = task_tokens(task)
  return particle_filter(num_particles, "systematic", ess_threshold, max_new_tokens=max_new_tokens,
                         delimiters=ids.steps, stop_tokens=ids.stop, pad_id=ids.pad)


def _prompts(task, problems, width: int = PROMPT_WIDTH):
  toks, lens = pad_prompts([prompt_ids(task, p) for p in problems], width=width)
  return jnp.asarray(toks), jnp.asarray(lens)


def exact_target_samples(task, models, problems, key, max_new_tokens: int = 96, eps: float = 0.01,
                         max_rounds: int = 64, batch: int = 64):
  """One exact sample of sigma proportional to p(x) phi(x) per problem, by rejection from the
  policy: accept x ~ p with probability phi(x) / (1 - eps) (phi = 1 - eps if x is right,
  eps if not). Returns (int32[B, max_new_tokens] tokens, int32[B] lengths)."""
  from tts_jax.sampling import sample  # noqa: PLC0415
  ids = task_tokens(task)
  toks, lens = _prompts(task, problems)
  out_t = np.full((len(problems), max_new_tokens), ids.pad, np.int32)
  out_l = np.full(len(problems), -1, np.int32)
  checker = step_oracle(task, "log", eps=eps)
  for r in range(max_rounds):
    key, k_sample, k_accept = jax.random.split(key, 3)
    s = sample(models.policy, models.policy_params, toks, key=k_sample, num_samples=batch, prompt_lengths=lens,
               max_new_tokens=max_new_tokens, stop_tokens=ids.stop, pad_id=ids.pad)
    log_phi, _ = checker.score(None, checker.init(None, toks, lens, batch, max_new_tokens), s.tokens, s.lengths,
                               jnp.ones(s.lengths.shape, bool), None)
    accept = np.asarray(jax.random.uniform(k_accept, log_phi.shape) < jnp.exp(log_phi) / (1 - eps))
    for b in np.flatnonzero(out_l < 0):
      hit = np.flatnonzero(accept[b])
      if hit.size:
        out_t[b], out_l[b] = np.asarray(s.tokens[b, hit[0]]), int(s.lengths[b, hit[0]])
    if (out_l >= 0).all():
      return jnp.asarray(out_t), jnp.asarray(out_l)
  raise RuntimeError(f"no accepted sample for {int((out_l < 0).sum())} problems after {max_rounds} rounds")


def twist_report(task, models, twist, twist_params, problems, *, num_particles: int = 32, max_new_tokens: int = 96,
                 seed: int = 0) -> dict:
  """Untwisted against twisted SMC for p(x) phi(x) on `problems` (one row each), phi the
  outcome-only checker (`outcome_potential`): log Z bounds (`tts_jax.smc.bounds.log_z_bounds`,
  the CSMC/IWAE upper bounds from exact samples of sigma) and "ess", the mean normalized ESS
  of importance sampling's final weights. A third row, "step potentials", is untwisted SMC
  for the same target with the exact step checker as step potentials (`step_oracle`): the
  hand-made twist a learned one is measured against. Every row's bounds bracket the same
  mean log Z."""
  toks, lens = _prompts(task, problems)
  cfg = twist_config(task, num_particles, max_new_tokens)
  ref_t, ref_l = exact_target_samples(task, models, problems, jax.random.key(seed + 1), max_new_tokens,
                                      eps=twist.eps)
  outcome = outcome_potential(task, twist.eps)
  rows = {"untwisted": (None, None, outcome), "twisted": (twist, twist_params, outcome),
          "step potentials": (None, None, step_oracle(task, "log", eps=twist.eps))}
  out = {}
  for name, (tw, tp, potential) in rows.items():
    b = log_z_bounds(models.policy, models.policy_params, toks, lens, jax.random.key(seed), cfg=cfg,
                     potential=potential, reference_tokens=ref_t, reference_lengths=ref_l, twist=tw, twist_params=tp)
    iwae = run_smc(models.policy, models.policy_params, toks, lens, jax.random.key(seed + 2),
                   cfg=dataclasses.replace(cfg, select=Resample(ess_threshold=0.0)), potential=potential, twist=tw,
                   twist_params=tp)
    w = np.asarray(jax.nn.softmax(iwae.log_weights, axis=1), np.float64)
    out[name] = dict(dataclasses.asdict(b), ess=float(np.mean(1 / np.sum(w ** 2, axis=1)) / num_particles))
  return out
