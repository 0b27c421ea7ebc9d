"""One command for a GPU machine: kernel accuracy, decode attention, end-to-end sampling.

    python benchmarks/gpu.py                # the full run (an H100 / H200: ~10 min)
    python benchmarks/gpu.py --smoke        # tiny shapes, any backend (CPU: Pallas interpreted)
    python benchmarks/gpu.py --only kernels attention

(a) kernels: `flash_prefill` and `cascade_decode` (compiled Pallas; interpreted on CPU)
    against float32 references over a sweep of shapes with non-powers of two (N, G, D).
(b) attention: one layer's decode attention (32 query / 8 KV heads, D 128, bfloat16) for
    N in {16, 64, 256} x prompts {1k, 4k, 16k}: XLA dense, the XLA cascade path and Pallas.
(c) end to end: `tts_jax.sampling.sample` from a 1.1B Llama-shaped bfloat16 model (vocab
    32000, hidden 2048, 22 layers, 32 query / 4 KV heads) with random weights written by
    `transformers` (N=64 x 256 new tokens from 1k and 4k prompts, N=256 x 128 from 1k), the
    XLA path vs Pallas vs `transformers.generate` on the same weights (on CUDA when torch
    has it). Tokens/s and the percentage of the floor: the bytes a step must read (the
    weights once, the prompt KV once, every sample's suffix KV) at the HBM bandwidth
    measured in the same run (a >= 1 GB buffer, >= 10 passes).
Every line says what ran where; rows that cannot run (no CUDA torch) say so.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the device

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention import dense  # noqa: E402
from timing import copy_bandwidth, timed  # noqa: E402

from tts_jax.kernels import (cascade_decode, cascade_decode_reference, flash_prefill,  # noqa: E402
                             flash_prefill_reference)
from tts_jax.models import hf  # noqa: E402
from tts_jax.sampling import sample  # noqa: E402

LLAMA_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=8192)
TINY = dict(vocab_size=512, hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, max_position_embeddings=512)


def _interpret() -> bool:
  return jax.default_backend() == "cpu"


def kernels(smoke: bool) -> None:
  """(a) Both kernels against float32 references: max |error| / max |reference|."""
  print("\n(a) kernels vs float32 references (bfloat16 inputs)")
  print(f"{'kernel':15s} {'B,N,Hkv,G,D,Tp':24s} {'rel err':>9s}")
  shapes = [(2, 5, 2, 3, 80, 45), (1, 3, 1, 6, 128, 300)] if smoke else [
      (2, 5, 2, 3, 80, 1000), (1, 3, 2, 6, 128, 4096), (1, 64, 4, 4, 128, 4096), (1, 256, 1, 7, 96, 2048),
      (4, 16, 8, 4, 128, 1024), (1, 1, 2, 8, 256, 777), (1, 64, 2, 6, 64, 16384)]
  worst = 0.0
  for b, n, hkv, g, d, tp in shapes:
    ks = jax.random.split(jax.random.key(tp + n), 8)
    r = lambda k, s: jax.random.normal(k, s, jnp.float32).astype(jnp.bfloat16)  # noqa: E731
    f32 = lambda *x: [jnp.asarray(y, jnp.float32) if y.dtype == jnp.bfloat16 else y for y in x]  # noqa: E731
    ts = 64
    q, pk, pv = r(ks[0], (b, n, hkv, g, d)), r(ks[1], (b, hkv, tp, d)), r(ks[2], (b, hkv, tp, d))
    sk, sv = r(ks[3], (b, n, hkv, ts, d)), r(ks[4], (b, n, hkv, ts, d))  # head-major, as the caches
    plen = jnp.maximum(jnp.arange(b, dtype=jnp.int32) * -(tp // 3) + tp, 1)
    mask = jax.random.bernoulli(ks[5], 0.7, (b, n, ts))
    got = cascade_decode(q, pk, pv, plen, sk, sv, mask, interpret=_interpret())[0]
    ref = cascade_decode_reference(*f32(q, pk, pv, plen, sk, sv, mask))[0]
    err = float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))
    worst = max(worst, err)
    print(f"{'cascade_decode':15s} {str((b, n, hkv, g, d, tp)):24s} {err:9.2e}")
    t = min(tp, 64 if smoke else 2048)
    qp, kp, vp = r(ks[6], (b, t, hkv, g, d)), r(ks[7], (b, hkv, t, d)), r(ks[1], (b, hkv, t, d))
    lens = jnp.maximum(jnp.arange(b, dtype=jnp.int32) * -(t // 3) + t, 1)
    got = flash_prefill(qp, kp, vp, lens, interpret=_interpret())[0]
    ref = flash_prefill_reference(*f32(qp, kp, vp, lens))[0]
    valid = (jnp.arange(t)[None, :] < lens[:, None])[..., None, None, None]
    err = float(jnp.max(jnp.where(valid, jnp.abs(got - ref), 0)) / jnp.max(jnp.abs(ref)))
    worst = max(worst, err)
    print(f"{'flash_prefill':15s} {str((b, '-', hkv, g, d, t)):24s} {err:9.2e}")
  print(f"worst relative error {worst:.2e} ({'ok' if worst < 2e-2 else 'TOO LARGE'}: bfloat16 inputs, bound 2e-2)")


def attention(smoke: bool, peak: float) -> None:
  """(b) One layer's decode attention: XLA dense, XLA cascade, Pallas."""
  hq, hkv, d, suffix = (6, 2, 64, 16) if smoke else (32, 8, 128, 512)
  dt = jnp.bfloat16
  print(f"\n(b) decode attention, one layer, {hq} q / {hkv} kv heads, D {d}, suffix {suffix}, bfloat16")
  print(f"{'N':>4s} {'prompt':>6s} {'path':12s} {'ms':>9s} {'GB/s':>7s} {'% peak':>6s} {'vs cascade':>10s}")
  paths = {"xla-dense": jax.jit(dense), "xla-cascade": jax.jit(lambda *x: cascade_decode_reference(*x)[0]),
           "pallas": lambda *x: cascade_decode(*x, interpret=_interpret())[0]}
  for tp in ((64,) if smoke else (1024, 4096, 16384)):
    for n in ((3,) if smoke else (16, 64, 256)):
      ks = jax.random.split(jax.random.key(n + tp), 5)
      q = jax.random.normal(ks[0], (1, n, hkv, hq // hkv, d), dt)
      pk, pv = (jax.random.normal(k, (1, hkv, tp, d), dt) for k in ks[1:3])
      sk, sv = (jax.random.normal(k, (1, n, hkv, suffix, d), dt) for k in ks[3:5])
      args = (q, pk, pv, jnp.asarray([tp], jnp.int32), sk, sv, jnp.ones((1, n, suffix), bool))
      min_bytes = 2 * (tp + n * suffix) * hkv * d * 2
      times = {}
      for name, f in paths.items():
        try:
          times[name] = timed(f, *args, repeats=3 if smoke else 10)[1]
        except Exception as e:  # noqa: BLE001 (a row that cannot run says why)
          print(f"{n:4d} {tp:6d} {name:12s} failed: {type(e).__name__}: {str(e)[:120]}")
      for name, t in times.items():
        ratio = times.get("xla-cascade", t) / t
        print(f"{n:4d} {tp:6d} {name:12s} {1e3 * t:9.3f} {min_bytes / t / 1e9:7.1f} {100 * min_bytes / t / peak:6.1f} "
              f"{ratio:9.2f}x")


def _write_checkpoint(path: str, config: dict):
  """Random weights saved by transformers (Llama architecture), plus a word-level tokenizer."""
  import torch  # noqa: PLC0415
  from tokenizers import Tokenizer, models  # noqa: PLC0415
  from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415
  torch.manual_seed(0)
  model = LlamaForCausalLM(LlamaConfig(**config, torch_dtype="bfloat16")).to(torch.bfloat16).eval()
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  model.save_pretrained(path)
  Tokenizer(models.WordLevel({f"t{i}": i for i in range(config["vocab_size"])}, unk_token="t0")).save(
      os.path.join(path, "tokenizer.json"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as fh:
    json.dump({"eos_token": "t1"}, fh)
  return model


def _floor_seconds(config: dict, n: int, prompt: int, new: int, bandwidth: float) -> float:
  """Bytes every decode step must read (bfloat16 weights once, the prompt KV once, each
  sample's suffix KV so far), summed over the steps, at `bandwidth`."""
  h, layers = config["hidden_size"], config["num_hidden_layers"]
  d = h // config["num_attention_heads"]
  weights = 2 * (2 * config["vocab_size"] * h + layers * (
      h * d * (2 * config["num_attention_heads"] + 2 * config["num_key_value_heads"]) + 3 * h * config["intermediate_size"]))
  kv_token = 2 * 2 * layers * config["num_key_value_heads"] * d
  total = new * (weights + prompt * kv_token) + kv_token * n * new * (new - 1) / 2
  return total / bandwidth


def end_to_end(smoke: bool, bandwidth: float) -> None:
  """(c) sample() from a Llama-shaped bfloat16 model: XLA vs Pallas vs transformers.generate."""
  import torch  # noqa: PLC0415
  config = TINY if smoke else LLAMA_1B
  runs = [(4, 8, 32)] if smoke else [(64, 256, 1024), (64, 256, 4096), (256, 128, 1024)]
  path = tempfile.mkdtemp()
  model = _write_checkpoint(path, config)
  lm, params, _ = hf.load(path, dtype="bfloat16")
  params = jax.device_put(params)
  nparams = sum(p.numel() for p in model.parameters())
  cuda = torch.cuda.is_available()
  hf_device = "cuda" if cuda else "cpu"
  print(f"\n(c) end to end: Llama-shaped, {nparams / 1e6:.1f}M params, bfloat16, random weights; "
        f"transformers {'on CUDA' if cuda else 'on CPU (no CUDA torch here)'}")
  print(f"{'N':>4s} {'new':>4s} {'prompt':>6s} {'path':24s} {'tok/s':>9s} {'s':>8s} {'% floor':>7s} {'vs HF':>7s}")
  model = model.to(hf_device)
  for n, new, prompt_len in runs:
    prompt = np.random.RandomState(prompt_len).randint(2, config["vocab_size"], size=prompt_len).tolist()
    floor = _floor_seconds(config, n, prompt_len, new, bandwidth)
    results = {}
    for impl in ("xla", "pallas"):
      lm_i = dataclasses.replace(lm, config=lm.config.replace(attention_impl=impl))
      run = lambda: jax.block_until_ready(sample(lm_i, params, [prompt], key=jax.random.key(0), num_samples=n,  # noqa: B023,E731
                                                 max_new_tokens=new).tokens)
      try:
        run()
        times = []
        for _ in range(1 if smoke else 3):
          t0 = time.perf_counter()
          run()
          times.append(time.perf_counter() - t0)
        results[f"tts_jax {impl}"] = statistics.median(times)
      except Exception as e:  # noqa: BLE001
        print(f"{n:4d} {new:4d} {prompt_len:6d} tts_jax {impl:16s} failed: {type(e).__name__}: {str(e)[:120]}")
    ids = torch.tensor([prompt], device=hf_device)
    with torch.no_grad():
      gen = lambda: model.generate(ids, do_sample=True, num_return_sequences=n, max_new_tokens=new,  # noqa: E731
                                   min_new_tokens=new, top_k=0, top_p=1.0, temperature=1.0)
      gen()
      if cuda:
        torch.cuda.synchronize()
      t0 = time.perf_counter()
      gen()
      if cuda:
        torch.cuda.synchronize()
      results[f"transformers ({hf_device})"] = time.perf_counter() - t0
    base = results[f"transformers ({hf_device})"]
    for name, t in results.items():
      print(f"{n:4d} {new:4d} {prompt_len:6d} {name:24s} {n * new / t:9.0f} {t:8.2f} {100 * floor / t:7.1f} "
            f"{base / t:6.1f}x")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--smoke", action="store_true", help="tiny shapes (any backend)")
  ap.add_argument("--only", nargs="+", choices=["kernels", "attention", "e2e"], default=["kernels", "attention", "e2e"])
  a = ap.parse_args()
  dev = jax.devices()[0]
  bandwidth = copy_bandwidth(nbytes=(64 << 20) if a.smoke else (1 << 30), repeats=10)
  print(f"device {dev.platform} ({dev.device_kind}); jax {jax.__version__}; measured copy bandwidth "
        f"{bandwidth / 1e9:.0f} GB/s ({'64 MB' if a.smoke else '1 GB'} buffer, 10 passes)")
  if "kernels" in a.only:
    kernels(a.smoke)
  if "attention" in a.only:
    attention(a.smoke, bandwidth)
  if "e2e" in a.only:
    end_to_end(a.smoke, bandwidth)


if __name__ == "__main__":
  main()
