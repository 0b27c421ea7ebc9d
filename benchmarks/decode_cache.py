"""The sampler's growing suffix cache vs one cache of max_new_tokens slots, side by side.

    python benchmarks/decode_cache.py [--problems 25] [--samples 64] [--new-tokens 96] [--repeats 3]

The main experiment's sampling on the shipped modchain policy (the first hard problems, 64
samples each, stop at <eos>): a decode step reads every slot of its cache, so the sampler
starts with 32 slots and doubles them when full (`tts_jax.sampling.sampler.cache_segments`).
The baseline is the same sampler with the ladder switched off (one loop over a cache of
max_new_tokens slots). Prints the medians, the ratio, and whether the tokens are identical.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import timed  # noqa: E402

from tts_jax.models import pad_prompts  # noqa: E402
from tts_jax.sampling import sample, sampler  # noqa: E402
from tts_jax.tasks import ModChain, load_default, task_prompts, task_tokens  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--problems", type=int, default=25)
  ap.add_argument("--samples", type=int, default=64)
  ap.add_argument("--new-tokens", type=int, default=96)
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  task, models = ModChain(), load_default("modchain")
  tokens, lengths = pad_prompts(task_prompts(task, list(task.split("hard")[:args.problems])))
  ids = task_tokens(task)

  def run():
    return sample(models.policy, models.policy_params, tokens, prompt_lengths=lengths, key=jax.random.key(0),
                  num_samples=args.samples, max_new_tokens=args.new_tokens, stop_tokens=ids.stop,
                  pad_id=ids.pad).tokens

  results = {}
  for name, segment in (("one cache of max_new_tokens slots", 1 << 30), ("growing cache (32, 64, ...)", 32)):
    sampler.CACHE_SEGMENT = segment
    jax.clear_caches()
    compile_s, median_s = timed(run, repeats=args.repeats)
    results[name] = (median_s, np.asarray(run()))
    print(f"{name:36s} {median_s:7.3f} s (first call {compile_s:.1f} s)")
  (base, a), (new, b) = results.values()
  print(f"ratio (one cache / growing) {base / new:.2f}x; tokens identical: {bool(np.array_equal(a, b))}")


if __name__ == "__main__":
  main()
