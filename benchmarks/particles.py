"""Particle filtering vs plain sampling of the same number of tokens on the same model.

    python benchmarks/particles.py [--particles 16] [--new-tokens 128] [--step-tokens 16] [--prompt 256]

Side by side in this process, on one random Qwen2-architecture policy (float32):
  sample      `tts_jax.sampling.sample`: N samples per prompt, no selection (the baseline);
  engine      `run_smc` with `NoSelect()` (best_of_n) and a constant potential (the engine's own cost:
              per-particle step boundaries and KV slots);
  pf          particle filtering, resampling at every step (systematic), with a cheap
              token-hash potential so that weights differ and resampling moves particles:
              the overhead of the step loop, resampling and suffix-cache gathers;
  pf+prm      the same with a PRM as the potential (a value model of the policy's size,
              scored incrementally with its own KV cache: the cost of scoring itself).
No stop token: every particle generates exactly --new-tokens tokens, in steps of
--step-tokens. Compile time is reported apart; timed runs are medians over --repeats.
"""

from __future__ import annotations

import argparse
import jax
import jax.numpy as jnp

from tts_jax.models.value import init_value
from tts_jax.sampling import sample
from tts_jax.search import best_of_n, particle_filter
from tts_jax.smc import run_smc
from tts_jax.verifiers import ValuePotential
from timing import add_policy_args, random_policy, timed


def zero(tokens, lengths, done):
  return jnp.zeros(lengths.shape)


def hashed(tokens, lengths, done):
  """A cheap potential that differs between particles: -((sum of tokens) mod 13) / 4."""
  mask = jnp.arange(tokens.shape[-1]) < lengths[..., None]
  return -(jnp.sum(jnp.where(mask, tokens, 0), axis=-1) % 13) / 4.0


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--particles", type=int, default=16)
  ap.add_argument("--step-tokens", type=int, default=16)
  add_policy_args(ap)
  a = ap.parse_args()
  cfg, lm, params, prompts, plens = random_policy(a)
  vm, vparams = init_value(cfg, seed=1)
  n, t = a.particles, a.new_tokens
  common = dict(max_new_tokens=t, max_step_tokens=a.step_tokens)
  runs = {
      "sample": lambda k: sample(lm, params, prompts, key=k, num_samples=n, max_new_tokens=t,
                                 prompt_lengths=plens).tokens,
      "engine": lambda k: run_smc(lm, params, prompts, plens, k, cfg=best_of_n(n, **common), potential=zero).tokens,
      "pf": lambda k: run_smc(lm, params, prompts, plens, k, cfg=particle_filter(n, ess_threshold=1.0, **common),
                              potential=hashed).tokens,
      "pf+prm": lambda k: run_smc(lm, params, prompts, plens, k,
                                  cfg=particle_filter(n, ess_threshold=1.0, **common),
                                  potential=ValuePotential(vm.as_lm()), potential_params=vparams).tokens,
  }
  tokens = a.prompts * n * t
  print(f"policy: {cfg.num_params() / 1e6:.1f}M params (hidden {a.hidden}, {a.layers} layers, vocab {a.vocab}); "
        f"{a.prompts} prompts x {a.prompt} tokens, N={n} particles x {t} new tokens, steps of {a.step_tokens}; "
        f"backend {jax.default_backend()}")
  base = None
  print(f"{'run':8s} {'compile+1st s':>13s} {'median s':>9s} {'tok/s':>8s} {'vs sample':>9s}")
  for name, fn in runs.items():
    first, med = timed(fn, jax.random.key(0), repeats=a.repeats)
    base = med if base is None else base
    print(f"{name:8s} {first:13.2f} {med:9.3f} {tokens / med:8.0f} {med / base:8.2f}x")


if __name__ == "__main__":
  main()
