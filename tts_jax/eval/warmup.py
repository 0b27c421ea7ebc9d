"""Compiling the pool methods' programs while the first pool is drawn.

On a cold run (nothing in the persistent compilation cache) the first batch compiles every
selection program after its pool is sampled and scored: tens of seconds on a CPU (RPC's
fits alone, one program per budget, take ~12 s on 2 cores), on the critical path while
the other core has little to do. `compile_pool_methods` runs each pool method once on a
stand-in pool of the run's shapes and dtypes (empty completions, constant scores) on a
worker thread, started before the first pool is drawn: the real batches then find their
programs compiled. The stand-in's numbers are discarded; every program is pure in its
inputs, so the results do not depend on it.

    warm = WARM_UP.submit(compile_pool_methods, exp, models, problems, start, prompt_width, timer)
    ...                      # draw the first pool
    warm.result()            # before the first batch's methods run (no program compiled twice)
"""

from __future__ import annotations

import concurrent.futures
import warnings

import numpy as np

from tts_jax.eval.batch import Batch
from tts_jax.eval.experiment import Experiment
from tts_jax.eval.pool import pool_of
from tts_jax.eval.pool_methods import PoolMethod
from tts_jax.eval.timing import Timer
from tts_jax.selection import encode_answers
from tts_jax.tasks import Completions, task_prompts

WARM_UP = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts_jax-warm-up")


def compiles_on_stand_in(method) -> bool:
  """Whether the warm-up runs `method`: a pool method evaluated by `PoolMethod.evaluate`,
  which reads only the batch's pool, subset orders and pool costs. A method with its own
  `evaluate` may read more (the samples' tokens, other batches, engine runs: `SlimSC`,
  `ComputeOptimal`, whose calibration keeps the batches it sees), so it is left out."""
  return isinstance(method, PoolMethod) and type(method).evaluate is PoolMethod.evaluate


def stand_in_batch(exp: Experiment, models, problems: list, start: int, prompt_width: int | None,
                   timer: Timer) -> Batch:
  """Batch `start` of `exp` with a stand-in pool instead of sampled ones: max(budgets) empty
  completions per problem, none with an answer or right (`pool_of`, so the pool has the
  real one's dtypes), every verifier score 0.5 and one PRM step per sample over
  max_new_tokens step slots (the shapes pool scoring gives a PRM without its own format)."""
  p, n, t = len(problems), max(exp.budgets), exp.max_new_tokens
  comps = Completions(tokens=np.zeros((p, n, t), np.int32), lengths=np.zeros((p, n), np.int32),
                      texts=[[""] * n for _ in range(p)], logprobs=np.zeros((p, n, t), np.float32),
                      entropy=np.zeros((p, n, t), np.float32))
  # Not graded by the task: a grader may need the main thread (math-verify's timeout uses signals).
  answers, _ = encode_answers([[None] * n for _ in range(p)])
  pool = pool_of(answers, np.zeros((p, n), bool), task_prompts(exp.task, problems), comps)
  pool.orm = np.full((p, n), 0.5, np.float32)
  pool.prm_steps = np.full((p, n, t), 0.5, np.float32)
  pool.prm_mask = np.zeros((p, n, t), bool)
  pool.prm_mask[..., 0] = True
  batch = Batch(experiment=exp, models=models, problems=problems, start=start, prompt_width=prompt_width, timer=timer)
  batch.use_pool(pool, ("orm", "prm"), comps)
  return batch


def compile_pool_methods(exp: Experiment, models, problems: list, start: int, prompt_width: int | None,
                         timer: Timer) -> None:
  """Evaluates the pool methods of `exp` that read only the pool (`compiles_on_stand_in`) on
  `stand_in_batch` (batch `start`: `problems`) and discards the numbers: their programs are
  compiled, or loaded from the persistent cache. A method's error here is left to the real
  batch, which runs the same code on real data and raises it there; a stand-in that cannot
  be built is a warning (this call only saves time)."""
  try:
    batch = stand_in_batch(exp, models, problems, start, prompt_width, timer)
  except Exception as e:  # noqa: BLE001  (only time is lost: the batches compile their own programs)
    warnings.warn(f"the pool methods' warm-up was skipped: {e!r}", RuntimeWarning, stacklevel=1)
    return
  for i, m in enumerate(exp.methods):
    if compiles_on_stand_in(m):
      with timer.phase(m.timing_phase):
        try:
          m.evaluate(batch, i)  # host numbers: it waits for the device
        except Exception:  # noqa: BLE001, S112  (the real batch raises it)
          continue
