"""A prompt's particles do not depend on its batch-mates, for every selection strategy.

Prompt A run alone (with its own key) must equal, bit for bit, prompt A run in a batch
with prompts that keep running after A's particles have all finished: a finished
prompt is never selected again.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tabular_target import make_target
from tts_jax.search import beam_search, best_of_n, dvts, particle_filter
from tts_jax.smc import run_smc

V, T = 4, 6
FIELDS = ("tokens", "length", "logp", "logq", "log_weights", "log_potential", "log_z", "done", "steps",
          "ancestors", "num_resamples", "decoded", "hash")


@pytest.fixture(scope="module")
def target():
  return make_target(vocab=V, max_new=T, prompt=(1, 2), stops=(3,), seed=11, phi_scale=1.0)


STRATEGIES = {  # every selection strategy of the library, in each of its modes
    "multinomial-1": particle_filter(6, "multinomial", 1.0),
    "systematic-0.5": particle_filter(6, "systematic", 0.5),
    "residual-1": particle_filter(6, "residual", 1.0),
    "stratified-puri": particle_filter(6, "stratified", 1.0, incremental=False),
    "beam": beam_search(6, 3),
    "beam-no-dedup": beam_search(6, 2, dedup=False),
    "dvts": dvts(6, 2),
    "none": best_of_n(6),
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_alone_equals_batched(target, name):
  cfg = dataclasses.replace(STRATEGIES[name], max_new_tokens=T, stop_tokens=(3,), delimiters=(0,))
  # Batch-mates: prompts that finish late (a prompt of 3s ends at once; these don't).
  prompts = jnp.asarray([[1, 2], [2, 1], [0, 0], [1, 1]], jnp.int32)
  lengths = jnp.full((4,), 2, jnp.int32)
  differed = 0
  for seed in range(12):
    keys = jax.random.split(jax.random.key(seed), 4)
    batched = run_smc(target.lm, target.params, prompts, lengths, keys, cfg=cfg, potential=target.potential)
    alone = run_smc(target.lm, target.params, prompts[:1], lengths[:1], keys[:1], cfg=cfg,
                    potential=target.potential)
    for f in FIELDS:
      np.testing.assert_array_equal(np.asarray(getattr(alone, f))[0], np.asarray(getattr(batched, f))[0],
                                    err_msg=f"{name}, seed {seed}: field {f}")
    differed += int(np.asarray(batched.steps).max() > np.asarray(alone.steps).max())
  assert differed >= 3  # the batch-mates really did run longer than prompt 0 in several seeds
