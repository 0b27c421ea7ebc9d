"""The device work of D consecutive runner batches, run as one call over a mesh's data axis.

With a mesh of D data devices the runner takes D batches at a time: their pool samples,
verifier scores and search runs are each one call in which device d computes batch d
with exactly the program a one-device run uses for that batch (`tts_jax.parallel.per_device`),
so every number, and results.jsonl byte for byte, is the same for any device count.
Selection and metrics then run per batch, as without a mesh. Without a mesh a group is
one batch and the calls are the plain one-device ones.

Every batch is padded to `batch_problems` rows (copies of its first problem) for the device
work, and a group to D batches (copies of its first batch), so each device always gets one
whole batch. Verifier scores use each batch's own shapes (its longest completion rounded up,
`completion_width`; for a PRM also its most step ends rounded up to 8), as a one-device run
does: a group whose batches need different shapes makes one scoring call per shape.
A search method's runs at its budgets overlap, two at a time (`start_searches`), and the
runner draws the next group's pool while this one's methods run (`draw_pool`).
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.eval.experiment import Experiment
from tts_jax.eval.timing import Timer
from tts_jax.models import pad_prompts
from tts_jax.parallel import data_size, to_host
from tts_jax.tasks import Completions, DefaultModels, complete, task_prompts, task_tokens
from tts_jax.verifiers import (completion_outcome_probabilities, completion_step_probabilities, completion_width,
                               step_end_mask, step_query_count)


# Engine runs of a batch go through two worker threads (`BatchGroup.start_searches`).
_ENGINES = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="tts_jax-engine")


class BatchGroup:
  """Batches `batch_ids` of a run (chunks: their problems), at most `data_size(mesh)` of
  them. The device work is done once, on first use, for all of them; `Batch` objects read
  their rows (`rows(slot)`)."""

  def __init__(self, experiment: Experiment, models: DefaultModels, chunks: list[list], batch_ids, *,
               prompt_width: int | None = None, mesh=None, timer: Timer | None = None):
    d = data_size(mesh)
    batch_ids = [batch_ids] if isinstance(batch_ids, int) else list(batch_ids)
    if not 1 <= len(chunks) <= d or len(batch_ids) != len(chunks):
      raise ValueError(f"a group holds 1 to {d} batches (the mesh's data axis) with one id each, got "
                       f"{len(chunks)} batches and ids {batch_ids}")
    self.experiment, self.models, self.chunks, self.batch_ids = experiment, models, chunks, batch_ids
    self.prompt_width, self.mesh, self.timer = prompt_width, mesh, timer or Timer()
    self.size = d  # batches per device call; missing ones are copies of the first
    self._values: dict = {}
    self._search: dict = {}

  @property
  def rows_per_batch(self) -> int:
    return self.experiment.batch_problems

  def _batch_id(self, slot: int) -> int:
    """The run's batch number in `slot` (padding slots repeat the first batch)."""
    return self.batch_ids[slot if slot < len(self.batch_ids) else 0]

  def rows(self, b: int) -> slice:
    """The rows of batch `b` (0-based within the group) in the group's arrays."""
    return slice(b * self.rows_per_batch, (b + 1) * self.rows_per_batch)

  @functools.cached_property
  def problems(self) -> list:
    """size x batch_problems problems: each batch padded with copies of its first problem,
    the group with copies of its first batch."""
    n = self.rows_per_batch
    batches = [c + [c[0]] * (n - len(c)) for c in self.chunks]
    return sum(batches + [batches[0]] * (self.size - len(batches)), [])

  @functools.cached_property
  def prompts(self) -> list[list[int]]:
    return task_prompts(self.experiment.task, self.problems)

  @functools.cached_property
  def completions(self) -> Completions:
    """max(budgets) samples of every row: row r of batch b draws from fold_in(key(seed),
    b * batch_problems + r), the problem's index in the split for every real row (so a
    problem's samples do not depend on the grouping); each device samples one batch."""
    exp, m, n = self.experiment, self.models, self.rows_per_batch
    with self.timer.phase("sampling"):
      return complete(exp.task, m.policy, m.policy_params, self.prompts, num_samples=max(exp.budgets),
                      key=jax.random.key(exp.seed), max_new_tokens=exp.max_new_tokens,
                      temperature=exp.sampling.temperature, top_k=exp.sampling.top_k, top_p=exp.sampling.top_p,
                      min_p=exp.sampling.min_p, batch_prompts=n,
                      row_index=np.concatenate([self._batch_id(s) * n + np.arange(n) for s in range(self.size)]),
                      prompt_width=self.prompt_width, mesh=self.mesh)

  def draw_pool(self, verifiers: tuple[str, ...]) -> None:
    """Samples the group's pool and scores it with `verifiers` now, instead of when a method
    first asks (the runner draws the next group's pool on a worker thread while the current
    group's methods run)."""
    self.completions  # noqa: B018  (a cached property: drawn here, once)
    for v in verifiers:
      self.verifier_scores(v, 0)

  def verifier_scores(self, verifier: str, b: int):
    """Batch `b`'s scores by the shipped `verifier` ("orm": float32[n, N] probabilities;
    "prm": (float32[n, N, S], bool[n, N, S]) step probabilities and mask), n = batch_problems."""
    if verifier not in self._values:
      with self.timer.phase("verifier scoring"):
        self._values[verifier] = self._score(verifier)
    out = self._values[verifier]
    return jax.tree.map(lambda x: x[self.rows(b)], out)

  def _prm_view(self):
    """(prompts, tokens int32[P, N, L], lengths, ends bool[P, N, L]): the samples as the PRM
    reads them (`models.prm_format`: its own prompt, the steps re-tokenized in its layout)
    and where their step scores are read."""
    exp, comps, fmt, tok = self.experiment, self.completions, self.models.prm_format, self.models.prm_tokenizer
    prompts, seqs = [], []
    for problem, texts in zip(self.problems, comps.texts):
      encoded = [fmt.encode(tok, problem.problem, t) for t in texts]
      prompts.append(encoded[0][0])
      seqs.append([ids for _, ids in encoded])
    longest = max(len(s) for row in seqs for s in row)
    width = max(exp.max_new_tokens, longest)
    tokens = np.zeros(comps.tokens.shape[:2] + (width,), np.int32)
    ends = np.zeros(tokens.shape, bool)
    lengths = np.zeros(comps.lengths.shape, np.int32)
    for i, row in enumerate(seqs):
      for j, s in enumerate(row):
        tokens[i, j, :len(s)], ends[i, j, :len(s)], lengths[i, j] = s, fmt.read_mask(tok, s), len(s)
    return prompts, tokens, lengths, ends

  def _score(self, verifier: str):
    exp, comps = self.experiment, self.completions
    model, params = getattr(self.models, verifier), getattr(self.models, f"{verifier}_params")
    if model is None:
      raise ValueError(f"a method asks for the {verifier.upper()} but the experiment's models have none "
                       f"(set models.{verifier}_path)")
    prompts, tokens, all_lengths, steps = self.prompts, comps.tokens, comps.lengths, task_tokens(exp.task).steps
    prompt_width, ends = self.prompt_width, None
    if verifier == "prm" and getattr(self.models, "prm_format", None) is not None:
      prompts, tokens, all_lengths, ends = self._prm_view()
      prompt_width = None  # the PRM's own prompts
    shapes = [self._score_shape(verifier, tokens[self.rows(b)], all_lengths[self.rows(b)], steps,
                                None if ends is None else ends[self.rows(b)]) for b in range(self.size)]
    out = None
    for shape in sorted(set(shapes)):  # one call per distinct batch shape (almost always one)
      w, queries = shape
      mine = np.zeros(all_lengths.shape[0], bool)
      for b in range(self.size):
        mine[self.rows(b)] = shapes[b] == shape
      lengths = np.where(mine[:, None], np.minimum(all_lengths, w), 0)  # other batches' rows: empty, dropped
      kw = dict(prompt_width=prompt_width, width=w, mesh=self.mesh)
      if verifier == "orm":
        got = completion_outcome_probabilities(model, params, prompts, tokens, lengths, **kw)
      else:
        got = completion_step_probabilities(model, params, prompts, tokens, lengths, steps,
                                            num_steps=max(exp.max_new_tokens, tokens.shape[-1]),
                                            num_queries=queries, ends=ends, **kw)
      out = jax.tree.map(np.array, got) if out is None else out  # writable copies
      for b in range(self.size):
        if shapes[b] == shape:
          jax.tree.map(lambda dst, src: dst.__setitem__(self.rows(b), src[self.rows(b)]), out, got)
    return out

  @staticmethod
  def _score_shape(verifier: str, tokens, lengths, steps, ends=None) -> tuple[int, int]:
    """(completion width, PRM step ends read per completion) of one batch's scoring call:
    a one-device run's shapes for that batch, so every device count runs the same program.
    ends: where the steps' scores are read, when the PRM's format says (else at `steps`)."""
    if verifier not in ("orm", "prm"):
      raise ValueError(f"unknown verifier {verifier!r}; use 'orm' or 'prm'")
    w = completion_width(lengths)
    if verifier == "orm":
      return w, 1
    is_end = step_end_mask(tokens, lengths, steps, w, ends=ends)
    return w, step_query_count(int(is_end.sum(-1).max(initial=0)))

  def search(self, method, index: int, budget: int):
    """The result of `method.run_engine` (the experiment's method number `index`) at `budget`
    for every row of the group, as host arrays (`method.host_state`: e.g. particles without
    their caches)."""
    if (index, budget) not in self._search:
      self.start_searches(method, index, (budget,))
    run = self._search[index, budget]
    if isinstance(run, concurrent.futures.Future):
      run = self._search[index, budget] = run.result()
    return run

  def start_searches(self, method, index: int, budgets) -> None:
    """Starts the engine runs of `method` at `budgets` (those not started yet), two at a
    time on worker threads: one run traces, lowers and compiles (or loads) its program
    while the other executes. Each run is a pure function of its inputs, so the results
    are those of running them one by one; `search` waits for them."""
    todo = [k for k in dict.fromkeys(budgets) if (index, k) not in self._search]
    if not todo:
      return
    pad = task_tokens(self.experiment.task).pad
    tokens, lengths = pad_prompts(self.prompts, pad_id=pad, width=self.prompt_width)
    tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
    for k in todo:
      keys = jnp.concatenate([self._search_keys(k, index, b) for b in range(self.size)])
      run = functools.partial(self._run_engine, method, tokens, lengths, keys, k, threading.get_ident())
      # Several processes must launch their collectives in one order: no threads there.
      self._search[index, k] = _ENGINES.submit(run) if jax.process_count() == 1 else run()

  def _run_engine(self, method, tokens, lengths, keys, budget: int, caller: int):
    with self.timer.working_for(caller):  # its compile time is the waiting caller's
      p = method.run_engine(self.models, self.experiment, tokens, lengths, keys, budget, self.mesh)
      return to_host(method.host_state(p))

  def _search_keys(self, budget: int, index: int, b: int) -> jax.Array:
    """[batch_problems] keys of search method `index` at `budget` for batch `b`: problem i
    draws from fold_in(fold_in(fold_in(key(seed + 2), index), budget), i)."""
    root = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.experiment.seed + 2), index), budget)
    start = self._batch_id(b) * self.rows_per_batch
    return jax.vmap(lambda j: jax.random.fold_in(root, j))(jnp.arange(self.rows_per_batch) + start)
