"""Command line: `tts-jax run|train EXPERIMENT [--set key=value ...]`, `tts-jax train-defaults TASK`, `tts-jax demo`."""

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
  raise SystemExit(f"{args.experiment}: `config` is a {type(config).__name__}, not a training config")


def _run(args) -> None:
  from tts_jax.config_files import apply_overrides, load_config
  from tts_jax.eval.experiment import Experiment
  from tts_jax.eval.runner import run_experiment
  config = apply_overrides(load_config(args.experiment), args.set or [])
  if not isinstance(config, Experiment):
    raise SystemExit(f"{args.experiment}: `config` is a {type(config).__name__}, not an Experiment")
  run_experiment(config)


def _train_defaults(args) -> None:
  from tts_jax.train.retrain import train_defaults
  print(train_defaults(args.task, dest=args.dest))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="tts-jax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  demo = sub.add_parser("demo", help="sample N continuations of two prompts from a random model")
  demo.add_argument("--num-samples", type=int, default=16)
  demo.add_argument("--max-new-tokens", type=int, default=64)
  demo.set_defaults(fn=_demo)
  run = sub.add_parser("run", help="run (or resume) an experiment file; prints a table, writes a plot")
  run.add_argument("experiment", help="path to an experiments/<task>/<name>.py file")
  run.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config fields")
  run.set_defaults(fn=_run)
  train = sub.add_parser("train", help="run (or resume) a training experiment file")
  train.add_argument("experiment", help="path to an experiments/train/*.py file")
  train.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config fields")
  train.set_defaults(fn=_train)
  defaults = sub.add_parser("train-defaults", help="train and install a task's default policy, ORM and PRM")
  defaults.add_argument("task")
  defaults.add_argument("--dest", default=None, help="install here instead of tts_jax/tasks/defaults/TASK")
  defaults.set_defaults(fn=_train_defaults)
  args = parser.parse_args(argv)
  args.fn(args)


if __name__ == "__main__":
  main()
