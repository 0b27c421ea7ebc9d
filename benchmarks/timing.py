"""Timing helpers shared by the benchmark scripts."""

import statistics
import time

import jax
import jax.numpy as jnp

from tts_jax.models import init, qwen2_config


def timed(fn, *args, repeats: int = 3) -> tuple[float, float]:
  """(seconds of the first call incl. compilation, median seconds of `repeats` later calls)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


def copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 10) -> float:
  """Bytes/s of the device's memory (read + write) for a large copy-like kernel.

  A `nbytes` buffer (>= 1 GB by default, far beyond any cache) is scaled `repeats` times
  in a chain (each pass reads the last one's output, so only two buffers live); the host
  blocks once at the end, so dispatch overlaps the device work and the host timer
  measures the device (the best of three such runs).
  """
  x = jnp.ones((nbytes // 4,), jnp.float32)
  f = jax.jit(lambda v: v * 1.0001)
  jax.block_until_ready(f(x))
  best = float("inf")
  for _ in range(3):
    t0 = time.perf_counter()
    y = x
    for _ in range(repeats):
      y = f(y)
    jax.block_until_ready(y)
    best = min(best, (time.perf_counter() - t0) / repeats)
  return 2 * x.nbytes / best


def add_policy_args(ap) -> None:
  """The arguments of a benchmark's random policy and prompts: --prompts, --prompt,
  --new-tokens, --repeats, --hidden, --layers, --vocab."""
  ap.add_argument("--prompts", type=int, default=2)
  ap.add_argument("--prompt", type=int, default=256)
  ap.add_argument("--new-tokens", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--hidden", type=int, default=512)
  ap.add_argument("--layers", type=int, default=6)
  ap.add_argument("--vocab", type=int, default=8192)


def random_policy(a):
  """(config, lm, params, prompts int32[prompts, prompt], lengths int32[prompts]): a random
  Qwen2-architecture policy (float32) sized by `add_policy_args`' arguments, and random prompts."""
  cfg = qwen2_config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=3 * a.hidden, num_layers=a.layers,
                     num_heads=8, num_kv_heads=2, head_dim=a.hidden // 8,
                     max_position_embeddings=a.prompt + a.new_tokens + 16)
  lm, params = init(cfg, seed=0)
  prompts = jax.random.randint(jax.random.key(2), (a.prompts, a.prompt), 0, a.vocab)
  return cfg, lm, params, prompts, jnp.full((a.prompts,), a.prompt, jnp.int32)
