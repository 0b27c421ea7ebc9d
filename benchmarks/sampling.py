"""N samples from one prompt: tts_jax (shared prefix) vs transformers.generate vs tts_jax without sharing.

    python benchmarks/sampling.py [--num-samples 16] [--new-tokens 128] [--prompt 512] [--repeats 3]

All three run the same float32 weights (a random Qwen2-architecture model of ~35M
parameters saved by transformers and loaded by `tts_jax.models.hf.load`) side by
side in this process, with plain ancestral sampling (temperature 1, no filtering,
no stop token, so every sample is exactly --new-tokens long). Compile time is
reported apart; timed runs are medians over --repeats.

It also prints the decode floor on this machine: a decode step reads every non-embedding
weight once, so no float32 implementation using XLA's matmul decodes faster than one
[N, H] product over all those weights per token; the floor and the best ratio it allows are
printed beside the measured step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from tokenizers import Tokenizer, models
from transformers import Qwen2Config, Qwen2ForCausalLM

from tts_jax.models import hf
from tts_jax.sampling import sample

CONFIG = dict(vocab_size=16384, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
              num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048,
              tie_word_embeddings=False)


def write_checkpoint(path: str) -> Qwen2ForCausalLM:
  torch.manual_seed(0)
  model = Qwen2ForCausalLM(Qwen2Config(**CONFIG)).eval()
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  model.save_pretrained(path)
  vocab = {f"t{i}": i for i in range(CONFIG["vocab_size"])}
  Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(os.path.join(path, "tokenizer.json"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as fh:
    json.dump({"eos_token": "t1"}, fh)
  return model


def weight_streaming_floor(params, rows: int, repeats: int = 5) -> dict:
  """The least time one decode step can take with XLA's matmul on this machine: one
  [rows, H] x [H, all] product over every weight a step reads (all but the embedding table,
  packed into one matrix of the same bytes), timed best of `repeats`. -> {"bytes", "seconds"}."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  count = sum(x.size for path, x in leaves if "embed_tokens" not in jax.tree_util.keystr(path))
  hidden = CONFIG["hidden_size"]
  w = jnp.ones((count // hidden, hidden), jnp.float32)
  x = jnp.ones((rows, hidden), jnp.float32)
  matmul = jax.jit(lambda x, w: jnp.einsum("rh,oh->ro", x, w))
  jax.block_until_ready(matmul(x, w))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(matmul(x, w))
    times.append(time.perf_counter() - t0)
  return {"bytes": w.nbytes, "seconds": min(times)}


def timed(fn, repeats: int) -> tuple[float, list[float]]:
  """(first call seconds, [timed call seconds])."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return first, times


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--num-samples", type=int, default=16)
  ap.add_argument("--new-tokens", type=int, default=128)
  ap.add_argument("--prompt", type=int, default=512)
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  n, t_new, t_p = args.num_samples, args.new_tokens, args.prompt
  torch.set_num_threads(os.cpu_count())
  path = tempfile.mkdtemp()
  model = write_checkpoint(path)
  lm, params, _ = hf.load(path)
  prompt = np.random.RandomState(0).randint(0, CONFIG["vocab_size"], size=t_p).astype(np.int32)
  print(f"model: Qwen2 architecture, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
        f"float32; prompt {t_p} tokens; N={n} samples x {t_new} new tokens; backend "
        f"{jax.default_backend()}, {os.cpu_count()} CPU threads; jax {jax.__version__}, torch {torch.__version__}")

  results = {}
  prefill = jax.jit(lm.prefill)
  for name, share in (("tts_jax (shared prefix)", True), ("tts_jax (no prefix sharing)", False)):
    rows = n if not share else 1
    toks = jnp.asarray(np.tile(prompt, (rows, 1)))
    lens = jnp.full((rows,), t_p, jnp.int32)
    p_first, p_times = timed(lambda: jax.block_until_ready(prefill(params, toks, lens)), args.repeats)
    run = lambda: jax.block_until_ready(sample(lm, params, [list(prompt)], key=jax.random.key(0),
                                               num_samples=n, max_new_tokens=t_new, share_prefix=share))
    first, times = timed(run, args.repeats)
    total, pre = statistics.median(times), statistics.median(p_times)
    results[name] = dict(total=total, prefill=pre, decode=total - pre, compile=first - total)

  ids = torch.tensor(prompt[None].astype(np.int64))
  with torch.no_grad():
    p_first, p_times = timed(lambda: model(ids.repeat(n, 1), use_cache=True), args.repeats)
    gen = lambda: model.generate(ids, do_sample=True, num_return_sequences=n, max_new_tokens=t_new,
                                 min_new_tokens=t_new, top_k=0, top_p=1.0, temperature=1.0)
    out = gen()
    assert out.shape == (n, t_p + t_new), out.shape
    first, times = timed(gen, args.repeats)
  total, pre = statistics.median(times), statistics.median(p_times)
  results["transformers generate"] = dict(total=total, prefill=pre, decode=total - pre, compile=0.0)

  floor = weight_streaming_floor(params, n)

  base = results["transformers generate"]["total"]
  print(f"\n{'method':30s} {'tokens/s':>9s} {'total s':>8s} {'prefill s':>9s} {'decode s':>9s} "
        f"{'compile s':>9s} {'speedup vs HF':>13s}")
  for name, r in results.items():
    print(f"{name:30s} {n * t_new / r['total']:9.0f} {r['total']:8.2f} {r['prefill']:9.3f} "
          f"{r['decode']:9.2f} {r['compile']:9.2f} {base / r['total']:12.2f}x")
  shared, unshared = results["tts_jax (shared prefix)"], results["tts_jax (no prefix sharing)"]
  print(f"\nprefix sharing speedup (end to end): {unshared['total'] / shared['total']:.2f}x")
  best = shared["prefill"] + t_new * floor["seconds"]
  print(f"decode floor: every decode step reads the {floor['bytes'] / 1e6:.0f} MB of non-embedding weights; one "
        f"[{n}, H] x all-weights matmul takes {1e3 * floor['seconds']:.2f} ms here ({floor['bytes'] / floor['seconds'] / 1e9:.1f} GB/s), "
        f"tts_jax's decode step {1e3 * shared['decode'] / t_new:.2f} ms.\nWith that floor and nothing else per step, "
        f"shared prefix would take {best:.2f} s: at most {base / best:.2f}x transformers on this machine.")


if __name__ == "__main__":
  main()
