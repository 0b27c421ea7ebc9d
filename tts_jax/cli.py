"""Command line: `tts-jax run|train EXPERIMENT [--set key=value ...]`, `tts-jax train-defaults TASK`, `tts-jax demo`.

`tts-jax run` takes `--mesh data=D,model=M` (several devices) and `--distributed` or
`--coordinator HOST:PORT --num-processes P --process-id I` (several processes)."""

from __future__ import annotations

import argparse
import time


def _demo(args) -> None:
  import jax
  import numpy as np

  from tts_jax.models import init, qwen2_config
  from tts_jax.sampling import FINISH_REASONS, sample

  cfg = qwen2_config(vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
                     num_kv_heads=2, head_dim=32, max_position_embeddings=1024)
  lm, params = init(cfg, seed=0)
  rng = np.random.RandomState(0)
  prompts = [list(rng.randint(0, cfg.vocab_size, size=n)) for n in (37, 120)]
  kw = dict(num_samples=args.num_samples, max_new_tokens=args.max_new_tokens, temperature=0.8,
            top_p=0.95, stop_tokens=(0,))
  print(f"model: random Qwen2-architecture, {cfg.num_params() / 1e6:.1f}M params; "
        f"{len(prompts)} prompts x {args.num_samples} samples x <= {args.max_new_tokens} tokens")
  t0 = time.perf_counter()
  out = jax.block_until_ready(sample(lm, params, prompts, key=jax.random.key(0), **kw))
  t1 = time.perf_counter()
  out = jax.block_until_ready(sample(lm, params, prompts, key=jax.random.key(1), **kw))
  t2 = time.perf_counter()
  generated = int(out.lengths.sum())
  print(f"first call (with compile): {t1 - t0:.2f}s; second call: {t2 - t1:.2f}s, "
        f"{generated / (t2 - t1):.0f} generated tokens/s")
  for b in range(len(prompts)):
    reasons = [FINISH_REASONS[int(r)] for r in out.finish_reason[b]]
    print(f"prompt {b}: lengths {out.lengths[b].tolist()}; finish {reasons[:4]} ...; "
          f"mean log-prob/token {float(out.logprobs[b].sum() / out.lengths[b].sum()):.3f}")


def _train(args) -> None:
  from tts_jax.config_files import apply_overrides, load_config
  config = apply_overrides(load_config(args.experiment), args.set or [])
  from tts_jax.train import PolicyTrainConfig, train_policy
  if isinstance(config, PolicyTrainConfig):
    train_policy(config)
    return
  from tts_jax.train.verifier import VerifierTrainConfig, train_verifier
  if isinstance(config, VerifierTrainConfig):
    train_verifier(config)
    return
  from tts_jax.train.twist import TwistTrainConfig, train_twist
  if isinstance(config, TwistTrainConfig):
    train_twist(config)
    return
  raise SystemExit(f"{args.experiment}: `config` is a {type(config).__name__}, not a training config")


def _run(args) -> None:
  from tts_jax.config_files import apply_overrides, load_config
  from tts_jax.eval.experiment import Experiment
  from tts_jax.eval.runner import run_experiment
  config = apply_overrides(load_config(args.experiment), args.set or [])
  if not isinstance(config, Experiment):
    raise SystemExit(f"{args.experiment}: `config` is a {type(config).__name__}, not an Experiment")
  mesh = _mesh(args)
  run_experiment(config, mesh=mesh)


def _mesh(args):
  """The device mesh of `--mesh` (after joining the other processes of `--distributed` or
  `--coordinator`); None without either (one device)."""
  from tts_jax.parallel import parse_mesh
  axes = parse_mesh(args.mesh) if args.mesh is not None else None  # errors before any device work
  if args.coordinator or args.distributed:
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes (GPU/TPU ignore it)
    kw = {}
    if args.coordinator:
      if args.num_processes is None or args.process_id is None:
        raise SystemExit("--coordinator needs --num-processes and --process-id")
      kw = dict(coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    jax.distributed.initialize(**kw)
    if axes is None:
      axes = {}  # several processes: a mesh over all their devices
  if axes is None:
    return None
  from tts_jax.parallel import describe, make_mesh
  mesh = make_mesh(**axes)
  print(describe(mesh))
  return mesh


def _train_defaults(args) -> None:
  from tts_jax.train.retrain import train_defaults
  print(train_defaults(args.task, dest=args.dest))


def _smoke_models(args) -> None:
  from tts_jax.tasks.math.smoke import write_smoke_models
  for role, path in write_smoke_models(args.dest).items():
    print(f"{role}: {path}")


def build_parser() -> argparse.ArgumentParser:
  """The `tts-jax` command line."""
  parser = argparse.ArgumentParser(prog="tts-jax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  demo = sub.add_parser("demo", help="sample N continuations of two prompts from a random model")
  demo.add_argument("--num-samples", type=int, default=16)
  demo.add_argument("--max-new-tokens", type=int, default=64)
  demo.set_defaults(fn=_demo)
  run = sub.add_parser("run", help="run (or resume) an experiment file; prints a table, writes a plot")
  run.add_argument("experiment", help="path to an experiments/<task>/<name>.py file")
  run.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="override config fields (repeatable: every --set applies, in order)")
  run.add_argument("--mesh", default=None, metavar="data=D,model=M",
                   help="a device mesh: batches split over D devices, models over M ('auto': every device on data)")
  run.add_argument("--distributed", action="store_true",
                   help="join a multi-process run (jax.distributed.initialize(); TPU pods and SLURM detect the rest)")
  run.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="join a multi-process run at this coordinator (process 0's address)")
  run.add_argument("--num-processes", type=int, default=None)
  run.add_argument("--process-id", type=int, default=None)
  run.set_defaults(fn=_run)
  train = sub.add_parser("train", help="run (or resume) a training experiment file")
  train.add_argument("experiment", help="path to an experiments/train/*.py file")
  train.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                     help="override config fields (repeatable: every --set applies, in order)")
  train.set_defaults(fn=_train)
  defaults = sub.add_parser("train-defaults", help="train and install a task's default policy, ORM, PRM and twist")
  defaults.add_argument("task")
  defaults.add_argument("--dest", default=None, help="install here instead of tts_jax/tasks/defaults/TASK")
  defaults.set_defaults(fn=_train_defaults)
  smoke = sub.add_parser("smoke-models", help="write tiny random checkpoints of the real architectures "
                                               "(Qwen2 policy, Qwen2.5-Math-PRM-style PRM, ORM) for smoke runs")
  smoke.add_argument("dest")
  smoke.set_defaults(fn=_smoke_models)
  parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
  for sp in (demo, run, train, defaults, smoke):
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the Python traceback")
  return parser


def main(argv=None) -> None:
  args = build_parser().parse_args(argv)
  try:
    args.fn(args)
  except (KeyboardInterrupt, SystemExit):
    raise
  except Exception as e:  # one line naming the problem; --debug keeps the traceback
    if args.debug:
      raise
    raise SystemExit(f"tts-jax {args.command}: {type(e).__name__}: {e}") from None


if __name__ == "__main__":
  main()
