"""The cost of the mesh path, and throughput against the number of devices.

    python benchmarks/sharding.py [--prompts 8] [--samples 8] [--new-tokens 48] [--repeats 3] [--devices 1,2,4,8]

1. Overhead on one device: `sample()` without a mesh vs with a one-device mesh
   (`make_mesh()`: shard_map over "data", params and prompts placed), side by side in
   this process on the same random Qwen2-architecture model (~7M parameters), medians
   over --repeats after a compile call. The ratio must stay <= 1.05.
2. Scaling: the same sampling of --prompts x --devices prompts (one batch of --prompts per
   device) in a fresh process per device count (XLA_FLAGS=--xla_force_host_platform_device_count=D
   on CPU; the visible accelerators elsewhere), generated tokens per second. On a CPU the
   simulated devices share its cores, so this measures the overhead of more devices, not
   a speed-up; on a multi-accelerator host it is the data-parallel speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from timing import timed

MODEL = dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, num_kv_heads=2,
             head_dim=64, max_position_embeddings=512)


def _setup(prompts: int):
  import numpy as np

  from tts_jax.models import init, qwen2_config
  cfg = qwen2_config(**MODEL)
  lm, params = init(cfg, seed=0)
  rng = np.random.RandomState(0)
  return lm, params, [list(rng.randint(2, cfg.vocab_size, size=int(n))) for n in rng.randint(24, 64, size=prompts)]


def overhead(args) -> None:
  import jax

  from tts_jax.parallel import make_mesh
  from tts_jax.sampling import sample
  lm, params, prompts = _setup(args.prompts)
  kw = dict(key=jax.random.key(0), num_samples=args.samples, max_new_tokens=args.new_tokens)
  mesh = make_mesh(devices=jax.devices()[:1])
  plain = lambda: sample(lm, params, prompts, **kw).tokens  # noqa: E731
  meshed = lambda: sample(lm, params, prompts, mesh=mesh, **kw).tokens  # noqa: E731
  # Interleave the two so drifts of the machine hit both alike.
  c_plain, _ = timed(plain, repeats=1)
  c_mesh, _ = timed(meshed, repeats=1)
  t_plain, t_mesh = [], []
  for _ in range(args.repeats):
    t_plain.append(timed(plain, repeats=1)[1])
    t_mesh.append(timed(meshed, repeats=1)[1])
  a, b = statistics.median(t_plain), statistics.median(t_mesh)
  print(f"one device ({jax.devices()[0].platform}), {args.prompts} prompts x {args.samples} samples x "
        f"{args.new_tokens} tokens: no mesh {a * 1e3:.0f} ms, one-device mesh {b * 1e3:.0f} ms, "
        f"ratio {b / a:.3f} (compile {c_plain:.1f} s / {c_mesh:.1f} s)")


def scaling_child(args) -> None:
  import jax

  from tts_jax.parallel import make_mesh
  from tts_jax.sampling import sample
  d = jax.device_count()
  lm, params, prompts = _setup(args.prompts * d)
  kw = dict(key=jax.random.key(0), num_samples=args.samples, max_new_tokens=args.new_tokens)
  mesh = make_mesh() if d > 1 else None
  first, t = timed(lambda: sample(lm, params, prompts, mesh=mesh, **kw).tokens, repeats=args.repeats)
  tokens = len(prompts) * args.samples * args.new_tokens
  print(f"RESULT {d} {tokens / t:.0f} {t:.3f} {first:.1f}")


def scaling(args) -> None:
  print(f"\n{args.prompts} prompts per device x {args.samples} samples x {args.new_tokens} tokens:")
  print("| devices | prompts | generated tokens/s | per device | seconds | compile s |")
  print("| ---: | ---: | ---: | ---: | ---: | ---: |")
  for d in map(int, args.devices.split(",")):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={d}")
    out = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env=env, capture_output=True,
                         text=True, check=True)
    _, dev, tps, t, first = next(l for l in out.stdout.splitlines() if l.startswith("RESULT")).split()
    print(f"| {dev} | {args.prompts * int(dev)} | {float(tps):.0f} | {float(tps) / int(dev):.0f} | {t} | {first} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--prompts", type=int, default=8, help="prompts per device")
  parser.add_argument("--samples", type=int, default=8)
  parser.add_argument("--new-tokens", type=int, default=48)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--devices", default="1,2,4,8")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    scaling_child(args)
    return
  overhead(args)
  scaling(args)


if __name__ == "__main__":
  main()
