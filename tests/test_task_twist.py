"""The task-level twist pipeline (`tts_jax.train.twist`) on the shipped modchain policy: the
initial twist is exactly untwisted SMC, a CTL step moves it, and the exact target sampler
returns what the checker accepts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.smc import run_smc
from tts_jax.tasks import ModChain, TaskChecker, load_default, prompt_ids, step_oracle
from tts_jax.train.twist import (_prompts, exact_target_samples, train_task_twist, twist_config,
                                 twist_from_policy)


@pytest.fixture(scope="module")
def setup():
  task, models = ModChain(), load_default("modchain")
  return task, models, task.split("hard")[:3]


def test_the_initial_twist_is_untwisted_smc(setup):
  task, models, problems = setup
  twist, tparams = twist_from_policy(models.policy, models.policy_params)
  toks, lens = _prompts(task, problems)
  cfg = twist_config(task, 4, 32)
  run = lambda **kw: run_smc(models.policy, models.policy_params, toks, lens, jax.random.key(1), cfg=cfg,  # noqa
                             potential=step_oracle(task), **kw)
  plain, twisted = run(), run(twist=twist, twist_params=tparams)
  np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(twisted.tokens))
  np.testing.assert_allclose(np.asarray(plain.log_weights), np.asarray(twisted.log_weights), atol=1e-6)
  np.testing.assert_allclose(np.asarray(plain.final_log_z()), np.asarray(twisted.final_log_z()), atol=1e-6)


def test_a_ctl_step_moves_the_twist(setup):
  task, models, _ = setup
  twist, tparams = twist_from_policy(models.policy, models.policy_params)
  seen = []
  out = train_task_twist(task, models, twist, tparams, steps=1, prompts_per_step=2, num_particles=4, max_new_tokens=32,
                         learning_rate=1e-2, callback=lambda i, loss, ess: seen.append((loss, ess)))
  assert len(seen) == 1 and np.isfinite(seen[0][0]) and 0 < seen[0][1] <= 1
  assert float(jnp.abs(out["lm_head"]).max()) > 0  # the head left zero
  assert float(jnp.abs(tparams["lm_head"]).max()) == 0  # the caller's params are not donated


def test_exact_target_samples_tilt_towards_right_answers(setup):
  """sigma(right) = a (1 - eps) / (a (1 - eps) + (1 - a) eps) for a problem the policy gets
  right with probability a: far above a, below 1 on the problems it rarely solves."""
  task, models, _ = setup
  problems = task.split("hard")[:10]
  toks, lens = exact_target_samples(task, models, problems, jax.random.key(0), max_new_tokens=96, batch=32)
  check = TaskChecker(task)
  right = np.mean([check(prompt_ids(task, p), np.asarray(toks[i, :lens[i]]).tolist(), True)
                   for i, p in enumerate(problems)])
  pass_at_1 = models.report["hard"]["pass@1"]  # 0.27: what plain samples of the policy would give
  # Accepting every sample would give ~0.27; sigma's share is ~0.7 (a quarter of the hard
  # problems are almost never solved, so there sigma too is mostly wrong answers).
  assert right >= 0.5 and pass_at_1 <= 0.3, (right, pass_at_1)
