"""Run in a subprocess by tests/test_parallel.py: `python -m tests.parallel_worker N` with N
simulated CPU devices; prints a digest of sampled completions (per-device batches)."""

import os
import sys

N = int(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={N}"

import hashlib  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tts_jax.models import init  # noqa: E402
from tts_jax.models.config import ModelConfig  # noqa: E402
from tts_jax.parallel import make_mesh  # noqa: E402
from tts_jax.tasks import ModChain, complete, task_prompts  # noqa: E402


def main():
  assert jax.device_count() == N, jax.devices()
  task = ModChain()
  cfg = ModelConfig(vocab_size=task.tokenizer().vocab_size, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=128)
  lm, params = init(cfg, 0)
  problems = list(task.split("hard")[:7])  # 7 prompts in batches of 3: neither divides the other
  comps = complete(task, lm, params, task_prompts(task, problems), num_samples=4, key=jax.random.key(3),
                   max_new_tokens=16, batch_prompts=3, mesh=make_mesh() if N > 1 else None)
  digest = hashlib.sha256()
  for x in (comps.tokens, comps.lengths, comps.logprobs, comps.entropy):
    digest.update(np.ascontiguousarray(x).tobytes())
  print("DIGEST", comps.tokens.shape, digest.hexdigest())
  if N == 4:  # tensor parallel: params split over model=2 (data=2)
    from tts_jax.sampling import sample  # noqa: PLC0415
    prompts = task_prompts(task, problems)
    kw = dict(key=jax.random.key(5), num_samples=4, max_new_tokens=16)
    one = sample(lm, params, prompts, **kw)
    tp = sample(lm, params, prompts, mesh=make_mesh(data=2, model=2), **kw)
    same = float((np.asarray(one.tokens) == np.asarray(tp.tokens)).mean())
    diff = float(np.abs(np.asarray(one.logprobs) - np.asarray(tp.logprobs)).max())
    print("TP", same, diff)


if __name__ == "__main__":
  main()
