"""The engine's KV caches start small and grow as particles fill them (`cache_schedule`):
the run must be the same run as one with full-size caches from the start, for every
selection strategy and with a value model (PRM) potential whose cache grows too."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import policy_and_value
from tts_jax.search import beam_search, best_of_n
from tts_jax.smc import SMCModels, cache_schedule, particle_filter, run_smc
from tts_jax.verifiers import ValuePotential, as_potential

DELIM, EOS, T = 5, 7, 80
# Seeds whose runs cross both capacities (key 3 ends every PURI particle by token 20).
SEED = {"puri": 5}
FIELDS = ("tokens", "length", "done", "steps", "ancestors", "num_resamples", "decoded", "hash")


@pytest.fixture(scope="module")
def models():
  return policy_and_value(40, 128, seeds=(5, 6))


CONFIGS = {
    "smc-systematic": particle_filter(6, "systematic", 0.5),
    "puri": particle_filter(6, "multinomial", 1.0, incremental=False),
    "beam": beam_search(6, 3),  # (DVTS is the same selection with groups: tests/test_search_exact.py)
    "none": best_of_n(6),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_growing_caches_change_nothing(models, name):
  lm, params, vm, vparams = models
  cfg = dataclasses.replace(CONFIGS[name], max_new_tokens=T, delimiters=(DELIM,), stop_tokens=(EOS,),
                            max_step_tokens=7)
  potential = ValuePotential(vm.as_lm(), transform="logit" if name == "puri" else "log")
  assert cache_schedule(SMCModels(lm, as_potential(potential)), cfg) == (32, 64, T)
  prompts = jnp.asarray([[1, 2, 3, 0], [4, 4, 0, 0], [9, 8, 7, 6]], jnp.int32)
  plens = jnp.asarray([3, 2, 4], jnp.int32)
  run = lambda c: run_smc(lm, params, prompts, plens, jax.random.key(SEED.get(name, 3)), cfg=c, potential=potential,
                          potential_params=vparams)
  grown, fixed = run(cfg), run(dataclasses.replace(cfg, grow_cache=False))
  # The run crossed both capacities mid-step (steps of 7 tokens end at 7, 14, ..., not at 32 or 64).
  assert int(np.asarray(grown.length).max()) > 64, np.asarray(grown.length)
  assert grown.cache.capacity == T and grown.potential_state.cache.capacity == T
  for f in FIELDS:
    np.testing.assert_array_equal(np.asarray(getattr(grown, f)), np.asarray(getattr(fixed, f)), err_msg=f)
  for f in ("logp", "logq", "log_weights", "log_potential", "log_z"):
    np.testing.assert_allclose(np.asarray(getattr(grown, f)), np.asarray(getattr(fixed, f)), rtol=1e-5,
                               atol=1e-5, err_msg=f)


def test_fixed_schedules(models):
  """Paged caches and `grow_cache=False` keep one capacity; short runs need no growth."""
  lm, _, vm, _ = models
  m = SMCModels(lm, as_potential(ValuePotential(vm.as_lm())))
  assert cache_schedule(m, particle_filter(4, max_new_tokens=T, grow_cache=False)) == (T,)
  assert cache_schedule(m, particle_filter(4, max_new_tokens=T, page_size=16)) == (T,)
  assert cache_schedule(m, particle_filter(4, max_new_tokens=20)) == (20,)
  assert cache_schedule(m, particle_filter(4, max_new_tokens=64)) == (32, 64)


def test_building_blocks_make_the_run(models):
  """The documented building blocks (init_particles, extend, reweight, apply_selection) in a
  host loop give run_smc's particles (full-size caches, the same keys)."""
  from tts_jax.smc import SMCParams, apply_selection, extend, init_particles, prompt_keys, reweight
  lm, params, vm, vparams = models
  cfg = dataclasses.replace(CONFIGS["smc-systematic"], max_new_tokens=T, delimiters=(DELIM,), stop_tokens=(EOS,),
                            max_step_tokens=7, grow_cache=False)
  potential = ValuePotential(vm.as_lm())
  m, prm = SMCModels(lm, as_potential(potential)), SMCParams(policy=params, potential=vparams)
  prompts = jnp.asarray([[1, 2, 3, 0], [4, 4, 0, 0], [9, 8, 7, 6]], jnp.int32)
  plens = jnp.asarray([3, 2, 4], jnp.int32)
  keys = prompt_keys(jax.random.key(3), 3)

  @jax.jit
  def step(p, s):
    k_ext, k_sel = jax.vmap(jax.random.split, out_axes=1)(jax.vmap(lambda k: jax.random.fold_in(k, s))(keys))
    live, before = ~jnp.all(p.done, axis=1), p.length
    p, logw = extend(m, prm, cfg, k_ext, p)
    p = reweight(m, prm, cfg, p, logw, p.length > before, live)
    return apply_selection(p, cfg.select.select(k_sel, p))

  p, s = init_particles(m, prm, prompts, plens, cfg), 0
  while not bool(jnp.all(p.done)):
    p, s = step(p, s), s + 1
  want = run_smc(lm, params, prompts, plens, jax.random.key(3), cfg=cfg, potential=potential, potential_params=vparams)
  for f in FIELDS:
    np.testing.assert_array_equal(np.asarray(getattr(p, f)), np.asarray(getattr(want, f)), err_msg=f)
  np.testing.assert_allclose(np.asarray(p.log_weights), np.asarray(want.log_weights), rtol=1e-5, atol=1e-5)
