"""Run in subprocesses by tests/test_parallel.py with N simulated CPU devices (XLA_FLAGS must
be set before JAX starts):

    python -m tests.parallel_worker sample N         # DIGEST of sampled completions (+ TP at N=8)
    python -m tests.parallel_worker smc N            # DIGEST of run_smc under resampling, beam and DVTS
    python -m tests.parallel_worker sample+smc N     # both in one process, lines prefixed "sample:" / "smc:"
    python -m tests.parallel_worker run N OUT [--stop K] [--process I --processes P --port PORT] [--num-subsets S]
                                                     # a tiny experiment into OUT; DIGEST of results.jsonl
"""

import argparse
import contextlib
import io
import os
import sys

ARGS = argparse.ArgumentParser()
ARGS.add_argument("mode", choices=("sample", "smc", "sample+smc", "run", "host"))
ARGS.add_argument("devices", type=int)
ARGS.add_argument("out", nargs="?")
ARGS.add_argument("--stop", type=int, default=None)
ARGS.add_argument("--process", type=int, default=0)
ARGS.add_argument("--processes", type=int, default=1)
ARGS.add_argument("--port", type=int, default=0)
ARGS.add_argument("--num-subsets", type=int, default=4)  # another value: another experiment config
A = ARGS.parse_args(sys.argv[1:])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={A.devices}"

import dataclasses  # noqa: E402
import hashlib  # noqa: E402
from unittest import mock  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

if A.processes > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{A.port}", num_processes=A.processes,
                             process_id=A.process)

from tts_jax.models import init, pad_prompts  # noqa: E402
from tts_jax.models.config import ModelConfig  # noqa: E402
from tts_jax.parallel import make_mesh  # noqa: E402
from tts_jax.tasks import ModChain, complete, task_prompts  # noqa: E402


def digest(*arrays) -> str:
  h = hashlib.sha256()
  for x in arrays:
    h.update(np.ascontiguousarray(np.asarray(x)).tobytes())
  return h.hexdigest()


def tiny_lm(task, attention_impl="auto"):
  cfg = ModelConfig(vocab_size=task.tokenizer().vocab_size, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=128, attention_impl=attention_impl)
  return init(cfg, 0)


def mesh_or_none():
  return make_mesh() if jax.device_count() > 1 else None


def sample_mode():
  task = ModChain()
  lm, params = tiny_lm(task)
  problems = list(task.split("hard")[:7])  # 7 prompts in batches of 3: neither divides the other
  comps = complete(task, lm, params, task_prompts(task, problems), num_samples=4, key=jax.random.key(3),
                   max_new_tokens=16, batch_prompts=3, mesh=mesh_or_none())
  print("DIGEST", comps.tokens.shape, digest(comps.tokens, comps.lengths, comps.logprobs, comps.entropy))
  # Pool scoring: on a mesh each device packs and scores its own prompts' completions (two of
  # them repeated), as a one-device call on those prompts alone does; shapes fixed by the widths.
  from tts_jax.models.value import init_value  # noqa: PLC0415
  from tts_jax.verifiers import completion_outcome_probabilities  # noqa: PLC0415
  vm, vparams = init_value(lm.config, seed=2)
  prompts = task_prompts(task, problems)
  toks = np.concatenate([np.asarray(comps.tokens), np.asarray(comps.tokens)[:, :2]], axis=1)
  lens = np.concatenate([np.asarray(comps.lengths), np.asarray(comps.lengths)[:, :2]], axis=1)
  kw = dict(prompt_width=64, width=16)
  if jax.device_count() > 1:
    orm = completion_outcome_probabilities(vm, vparams, prompts, toks, lens, mesh=make_mesh(), **kw)
  else:
    orm = np.concatenate([completion_outcome_probabilities(vm, vparams, prompts[i:i + 1], toks[i:i + 1],
                                                           lens[i:i + 1], **kw) for i in range(len(prompts))])
  print("SCORES", orm.shape, digest(orm))
  # The Pallas kernels (flash prefill, cascade decode; interpret mode on CPU) under shard_map.
  lm, params = tiny_lm(task, attention_impl="pallas")
  comps = complete(task, lm, params, task_prompts(task, problems[:3]), num_samples=2, key=jax.random.key(4),
                   max_new_tokens=6, batch_prompts=1, mesh=mesh_or_none())
  print("PALLAS", comps.tokens.shape, digest(comps.tokens, comps.lengths, comps.logprobs, comps.entropy))
  if A.devices == 8:  # tensor parallel: params split over model=2 (data=4)
    from tts_jax.sampling import sample  # noqa: PLC0415
    prompts = task_prompts(task, problems)
    kw = dict(key=jax.random.key(5), num_samples=4, max_new_tokens=16)
    one = sample(lm, params, prompts, **kw)
    tp = sample(lm, params, prompts, mesh=make_mesh(data=4, model=2), **kw)
    same = float((np.asarray(one.tokens) == np.asarray(tp.tokens)).mean())
    diff = float(np.abs(np.asarray(one.logprobs) - np.asarray(tp.logprobs)).max())
    # The value model split over "model" too: completion scores equal up to rounding.
    from tts_jax.models.value import init_value  # noqa: PLC0415
    from tts_jax.verifiers import completion_values  # noqa: PLC0415
    vm, vparams = init_value(lm.config, seed=1)
    args = (prompts, np.asarray(one.tokens), np.asarray(one.lengths))
    _, v_one = completion_values(vm, vparams, *args)
    _, v_tp = completion_values(vm, vparams, *args, mesh=make_mesh(data=4, model=2))
    print("TP", same, max(diff, float(np.abs(v_one - v_tp).max())))


def smc_mode():
  """5 prompts (no device count divides it) under the selection strategies that move particles
  (Resample, Beam with one group and with several), a potential that is a function of the
  tokens, so resampling, beams and groups all act."""
  from tts_jax.mcmc import qalign  # noqa: PLC0415
  from tts_jax.search import beam_search, dvts  # noqa: PLC0415
  from tts_jax.smc import OneOf, particle_filter, run_smc  # noqa: PLC0415
  from tts_jax.tasks import STEP  # noqa: PLC0415
  from tts_jax.tasks.oracle import TaskChecker  # noqa: PLC0415
  from tts_jax.verifiers import OraclePotential  # noqa: PLC0415
  task = ModChain()
  lm, params = tiny_lm(task)
  tokens, lengths = pad_prompts(task_prompts(task, list(task.split("hard")[:5])))
  step = task.tokenizer().token_to_id(STEP)

  def potential(toks, lens, done):  # a fixed, step-dependent preference for even token ids
    del done
    even = ((toks % 2) == 0) & (jnp.arange(toks.shape[-1]) < lens[..., None])
    return 0.3 * even.sum(-1).astype(jnp.float32) - 0.1 * lens.astype(jnp.float32)

  kw = dict(max_new_tokens=12, delimiters=(step,), max_step_tokens=3)
  configs = {"pf": particle_filter(4, scheme="systematic", ess_threshold=0.7, **kw)}
  configs |= {"beam": beam_search(4, 2, **kw), "dvts": dvts(4, 2, **kw)}
  # DVTS as a member of a OneOf (the runner's shared program): a traced switch under shard_map.
  members = [configs["pf"].select, configs["dvts"].select]
  configs["dvts in OneOf"] = dataclasses.replace(configs["dvts"], select=OneOf.among(members, configs["dvts"].select))
  mesh = mesh_or_none()
  parts, runs = [], {}
  for name, cfg in configs.items():
    p = runs[name] = run_smc(lm, params, tokens, lengths, jax.random.key(7), cfg=cfg, potential=potential, mesh=mesh)
    parts += [p.tokens, p.length, p.log_weights, p.log_z, p.ancestors, p.num_resamples]
    assert p.tokens.shape[0] == 5, (name, p.tokens.shape)
  for field in ("tokens", "log_weights", "ancestors"):
    assert np.array_equal(getattr(runs["dvts"], field), getattr(runs["dvts in OneOf"], field)), field
  # A potential with host work (a checker without array code, corrupted so scores vary): the
  # loop is driven from the host (`smc.host_steps`), per device on a mesh, with no callback.
  host_pot = OraclePotential(_HostChecker(TaskChecker(task)), auc=0.7)
  with mock.patch.object(jax, "pure_callback", side_effect=AssertionError("a host potential called back")):
    p = run_smc(lm, params, tokens, lengths, jax.random.key(7), cfg=configs["beam"], potential=host_pot, mesh=mesh)
  parts += [p.tokens, p.length, p.log_weights, p.log_z, p.ancestors, p.num_resamples]
  assert int(np.asarray(p.num_resamples).sum()) > 0 and len(np.unique(np.asarray(p.log_potential))) > 2
  # QAlign's chains, per device on a mesh: with an array reward (one program) and a host one.
  for reward in (potential, host_pot):
    with mock.patch.object(jax, "pure_callback", side_effect=AssertionError("a host reward called back")):
      q = qalign(lm, params, tokens, lengths, jax.random.key(7), reward=reward, steps=3, beta=0.5, num_chains=2,
                 max_new_tokens=12, mesh=mesh)
    parts += [q.tokens, q.lengths, q.reward, q.accepted, q.drawn, q.kept]
    assert q.tokens.shape[0] == 5 and 0 < float(np.asarray(q.accepted).mean()) < 1
  print("DIGEST", digest(*parts))
  if A.devices == 8:  # tensor parallel (data=4 x model=2): the same particles up to rounding
    for name, cfg, pot in (("TP", configs["pf"], potential), ("TPHOST", configs["beam"], host_pot)):
      one = run_smc(lm, params, tokens, lengths, jax.random.key(7), cfg=cfg, potential=pot)
      tp = run_smc(lm, params, tokens, lengths, jax.random.key(7), cfg=cfg, potential=pot,
                   mesh=make_mesh(data=4, model=2))
      same = float((np.asarray(one.tokens) == np.asarray(tp.tokens)).mean())
      print(name, same, float(np.abs(np.asarray(one.logp) - np.asarray(tp.logp)).max()))


@dataclasses.dataclass(frozen=True)
class _HostChecker:
  """A task's checker without its array form (`on_device`): only the host can run it."""

  checker: object

  def __call__(self, prompt_ids, completion_ids, done):
    return self.checker(prompt_ids, completion_ids, done)


def host_mode():
  """`host_each_device` on a mesh over every process's devices: each process computes its own
  devices' rows only, and the global result holds every device's rows in order."""
  from tts_jax.parallel import batch_sharding, host_each_device, to_host  # noqa: PLC0415
  mesh = make_mesh()
  d = mesh.shape["data"]
  table = np.arange(d * 2, dtype=np.int32).reshape(d, 1, 2)  # [D, rows=1, 2]: a carry with a device axis
  x = jax.make_array_from_callback(table.shape, batch_sharding(mesh, 3), lambda index: table[index])
  seen = []

  def fn(i, rows):
    seen.append(i)
    return {"v": rows * 10 + i}
  got = np.asarray(to_host(host_each_device(mesh, fn, x))["v"])
  print("HOST", jax.process_index(), sorted(seen), got.ravel().tolist(), flush=True)


def run_mode():
  from tts_jax.eval import Experiment, MajorityVote  # noqa: PLC0415
  from tts_jax.eval.runner import run_experiment  # noqa: PLC0415
  from tts_jax.eval.search_methods import ParticleFiltering  # noqa: PLC0415
  # 9 problems in batches of 2: 5 batches, the last short; no device count divides either.
  exp = Experiment(name="parallel", task=ModChain(), split="hard", num_problems=9, batch_problems=2, budgets=(1, 2),
                   methods=(MajorityVote(), ParticleFiltering()),
                   num_subsets=A.num_subsets, max_new_tokens=16, out_dir=A.out)
  run_experiment(exp, mesh=mesh_or_none(), stop_after_batches=A.stop, quiet=True)
  path = os.path.join(A.out, "results.jsonl")
  if jax.process_index() == 0 and A.stop is None:
    print("DIGEST", digest(np.frombuffer(open(path, "rb").read(), np.uint8)))
  print("DONE", jax.process_index(), flush=True)


if __name__ == "__main__":
  from tts_jax.eval.compile_cache import enable_compilation_cache  # noqa: E402
  enable_compilation_cache()
  assert jax.device_count() == A.devices * A.processes, jax.devices()
  modes = {"sample": sample_mode, "smc": smc_mode, "run": run_mode, "host": host_mode}
  if "+" in A.mode:  # one process, several checks: each line prefixed by its mode
    for mode in A.mode.split("+"):
      out = io.StringIO()
      with contextlib.redirect_stdout(out):
        modes[mode]()
      print("".join(f"{mode}:{line}\n" for line in out.getvalue().splitlines()), end="", flush=True)
  else:
    modes[A.mode]()
