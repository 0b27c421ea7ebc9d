"""Compile time against model depth: the sampler and a beam-search engine program.

    python benchmarks/compile.py [--layers 1 4 16 28] [--hidden 128]

For each depth L, a randomly initialised Qwen2-architecture policy and a PRM (a value model
of the same config) of L layers (the shipped modchain models' width: hidden 128, 4 heads, 2
KV heads, vocab 62, so the models' runtime stays small) and the shapes of the experiments'
batches (25 prompts of 40 tokens, 96 new tokens):
  sampler    `sample_jit`, 64 samples per prompt (the main experiment's pool);
  engine     the particle engine's program for beam search with the PRM as potential
             (N = 32, M = 4; search.py's beam rows).
Each program is lowered and compiled --repeats times (the persistent cache is not used),
the median compile time reported, together with the
optimised HLO's fusion count and while loops (each cache-capacity segment of a decode loop is
a while loop holding a copy of the step: `tts_jax.sampling.sampler.cache_segments`).
The layers are a Python loop in `tts_jax.models.transformer.Decoder.hidden`, so each layer's
fusions are compiled once per decode-loop segment and model; the last column is the added
compile time per layer against the first depth.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import jax
import jax.numpy as jnp

from tts_jax.models import qwen2_config
from tts_jax.models.lm import init
from tts_jax.models.value import init_value
from tts_jax.sampling import SamplingParams
from tts_jax.sampling.inputs import prompt_keys
from tts_jax.sampling.sampler import sample_jit
from tts_jax.search import beam_search
from tts_jax.smc.driver import _run_jit
from tts_jax.smc.engine import SMCModels, SMCParams
from tts_jax.traced import knobs_of, program_of
from tts_jax.verifiers import ValuePotential, as_potential

PROMPTS, PROMPT_LEN, NEW_TOKENS, SAMPLES, PARTICLES, EXPANSIONS = 25, 40, 96, 64, 32, 4
STOP, DELIMITER, PAD = 1, 2, 0


def _programs(layers: int, hidden: int) -> dict:
  """{name: jax Lowered} of the sampler and the beam engine at `layers` layers."""
  cfg = qwen2_config(vocab_size=62, hidden_size=hidden, intermediate_size=3 * hidden, num_layers=layers, num_heads=4,
                     num_kv_heads=2, head_dim=hidden // 4, max_position_embeddings=256)
  lm, params = init(cfg, 0)
  prm, prm_params = init_value(cfg, 1)
  tokens = jnp.full((PROMPTS, PROMPT_LEN), 3, jnp.int32)
  lengths = jnp.full((PROMPTS,), PROMPT_LEN - 8, jnp.int32)
  keys = prompt_keys(jax.random.key(0), PROMPTS)
  sampler = sample_jit.lower(lm, params, tokens, lengths, keys, num_samples=SAMPLES, max_new_tokens=NEW_TOKENS,
                             params_s=SamplingParams(temperature=1.0), stop_tokens=(STOP,), pad_id=PAD,
                             share_prefix=True)
  smc = beam_search(PARTICLES, EXPANSIONS, max_new_tokens=NEW_TOKENS, delimiters=(DELIMITER,), stop_tokens=(STOP,),
                    pad_id=PAD, proposal=SamplingParams(temperature=1.0))
  potential = as_potential(ValuePotential(prm.as_lm()))
  knobs = {"cfg": smc.knobs(), "potential": knobs_of(potential)}  # as `run_smc` passes them
  models = SMCModels(policy=lm, potential=program_of(potential), twist=None)
  engine = _run_jit.lower(models, SMCParams(policy=params, potential=prm_params, twist=None), tokens, lengths, keys,
                          None, knobs, smc.program())
  return {"sampler": sampler, "engine": engine}


def _compile(layers: int, hidden: int, repeats: int) -> dict:
  """{name: (median compile seconds, optimised HLO text)}: each repeat lowers the programs
  afresh (a `Lowered` compiles once per process), the lowering not timed."""
  times: dict = {}
  text: dict = {}
  for _ in range(repeats):
    jax.clear_caches()
    for name, lowered in _programs(layers, hidden).items():
      t0 = time.perf_counter()
      compiled = lowered.compile()
      times.setdefault(name, []).append(time.perf_counter() - t0)
      text.setdefault(name, compiled.as_text())
  return {name: (statistics.median(times[name]), text[name]) for name in times}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--layers", type=int, nargs="+", default=[1, 4, 16, 28])
  ap.add_argument("--hidden", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=3)
  a = ap.parse_args()
  jax.config.update("jax_enable_compilation_cache", False)
  print(f"backend {jax.default_backend()}; hidden {a.hidden}; median of {a.repeats} compilations")
  print(f"{'program':>8s} {'layers':>6s} {'compile s':>9s} {'fusions':>8s} {'while loops':>11s} {'s per added layer':>17s}")
  first: dict = {}
  for layers in a.layers:
    for name, (seconds, text) in _compile(layers, a.hidden, a.repeats).items():
      fusions = len(re.findall(r" fusion\(", text))
      loops = len(re.findall(r" while\(", text))
      base = first.setdefault(name, (layers, seconds))
      per_layer = (seconds - base[1]) / (layers - base[0]) if layers != base[0] else float("nan")
      print(f"{name:>8s} {layers:6d} {seconds:9.2f} {fusions:8d} {loops:11d} {per_layer:17.2f}", flush=True)


if __name__ == "__main__":
  main()
