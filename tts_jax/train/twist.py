"""A twist for a task's policy, learned by contrastive twist learning (CTL, Zhao et al. 2024)
on a stream of training problems, and the measures that say whether it helps.

    twist, params = twist_from_policy(models.policy, models.policy_params)   # log psi = 0: untwisted
    params = train_task_twist(task, models, twist, params, steps=200)
    report = twist_report(task, models, twist, params, problems)            # ESS, log Z bounds

The target is sigma(x) proportional to p(x) phi(x), phi the task's exact checker as a
potential (`step_oracle`: 1 - eps while right, eps after), so the optimal twist
psi*_t = E_p[phi | x_{1:t}] is the policy's own chance of finishing right from x_{1:t}.
The twist model is the policy's architecture started from the policy's weights with a
zero output head; all of it is trained. Its outputs z are read as
log psi = log(eps + 2 (1 - eps) sigmoid(z)) (`BoundedTwist`): in [log eps, log 2], about
the range of the optimal twist (phi is in [eps, 1 - eps]), so a noisy CTL step cannot push
log psi far past what phi can be; at z = 0 log psi = 0: untwisted SMC.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tts_jax.models import pad_prompts
from tts_jax.smc import SMCConfig, particle_filter, run_smc
from tts_jax.smc.bounds import log_z_bounds
from tts_jax.smc.resample import Resample
from tts_jax.smc.twists import ctl_update
from tts_jax.tasks.base import prompt_ids, task_tokens
from tts_jax.tasks.oracle import step_oracle

PROMPT_WIDTH = 64


@dataclasses.dataclass(frozen=True)
class BoundedTwist:
  """A twist model from a language model `lm`: its output z [..., V] read as
  log psi = log(eps + 2 (1 - eps) sigmoid(z)) in [log eps, log 2] (0 at z = 0). The cache
  functions are the model's (`prefill`, `init_cache`, `decode`, `forward` as in
  `tts_jax.models.lm.LanguageModel`)."""

  lm: Any
  eps: float = 0.01

  def _bound(self, z):
    return jnp.log(self.eps + 2 * (1 - self.eps) * jax.nn.sigmoid(z.astype(jnp.float32)))

  def forward(self, params, tokens, *args, **kw):
    return self._bound(self.lm.forward(params, tokens, *args, **kw))

  def prefill(self, params, tokens, lengths):
    first, prefix = self.lm.prefill(params, tokens, lengths)
    return self._bound(first), prefix

  def init_cache(self, *args, **kw):
    return self.lm.init_cache(*args, **kw)

  def decode(self, params, tokens, cache, **kw):
    out, cache = self.lm.decode(params, tokens, cache, **kw)
    return self._bound(out), cache


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


def train_task_twist(task, models, twist, twist_params, *, steps: int = 200, prompts_per_step: int = 8,
                     num_particles: int = 32, max_new_tokens: int = 96, learning_rate: float = 3e-4, seed: int = 0,
                     callback=None):
  """CTL over fresh training problems (`task.train_problem(seed, i)`, never a held-out one):
  each step one importance-sampling run of `num_particles` per prompt under the current
  twist, then one Adam step on the CTL surrogate (`tts_jax.smc.twists.ctl_loss`).
  callback(step, loss, normalized ESS of the run's final weights) after every step.
  Returns the trained twist params."""
  cfg = dataclasses.replace(twist_config(task, num_particles, max_new_tokens), select=Resample(ess_threshold=0.0))
  opt = optax.adam(learning_rate)
  twist_params = jax.tree.map(jnp.array, twist_params)  # a copy: the update donates it
  opt_state = opt.init(twist_params)
  potential, root = step_oracle(task, "log"), jax.random.key(seed)
  for i in range(steps):
    problems = [task.train_problem(seed, i * prompts_per_step + j) for j in range(prompts_per_step)]
    toks, lens = _prompts(task, problems)
    twist_params, opt_state, loss, ess = ctl_update(models.policy, models.policy_params, None, twist_params,
                                                    opt_state, toks, lens, jax.random.fold_in(root, i), twist=twist,
                                                    cfg=cfg, potential=potential, opt=opt)
    if callback is not None:
      callback(i, float(loss), float(ess))
  return twist_params


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
  """Untwisted against twisted SMC on `problems` (one row each): log Z bounds
  (`tts_jax.smc.bounds.log_z_bounds`, the CSMC/IWAE upper bounds from exact samples of
  sigma) and the mean normalized ESS of importance sampling's final weights."""
  toks, lens = _prompts(task, problems)
  cfg = twist_config(task, num_particles, max_new_tokens)
  ref_t, ref_l = exact_target_samples(task, models, problems, jax.random.key(seed + 1), max_new_tokens)
  potential = step_oracle(task, "log")
  out = {}
  for name, (tw, tp) in {"untwisted": (None, None), "twisted": (twist, twist_params)}.items():
    b = log_z_bounds(models.policy, models.policy_params, toks, lens, jax.random.key(seed), cfg=cfg,
                     potential=potential, reference_tokens=ref_t, reference_lengths=ref_l, twist=tw, twist_params=tp)
    iwae = run_smc(models.policy, models.policy_params, toks, lens, jax.random.key(seed + 2),
                   cfg=dataclasses.replace(cfg, select=Resample(ess_threshold=0.0)), potential=potential, twist=tw,
                   twist_params=tp)
    w = np.asarray(jax.nn.softmax(iwae.log_weights, axis=1), np.float64)
    out[name] = dict(dataclasses.asdict(b), ess=float(np.mean(1 / np.sum(w ** 2, axis=1)) / num_particles))
  return out
