"""Logits and greedy continuations equal Hugging Face transformers on the same weights."""

import numpy as np
import pytest
import torch

from tests.helpers import random_tokens, save_hf_checkpoint
from tts_jax.models import forward, hf
from tts_jax.sampling import sample

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}

CASES = {
    # GQA ratio 3, qkv bias, untied.
    "qwen2-gqa3": ("qwen2", {}),
    # Odd head counts (5 query heads, 1 kv head), tied embeddings.
    "qwen2-odd-tied": ("qwen2", dict(hidden_size=40, num_attention_heads=5, num_key_value_heads=1,
                                     tie_word_embeddings=True)),
    # Llama-3.x rope scaling, GQA 2, tied.
    "llama3-rope-tied": ("llama", dict(num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                                       rope_scaling=LLAMA3_ROPE, rope_theta=500000.0,
                                       tie_word_embeddings=True)),
    # Llama with attention bias and no GQA, linear rope scaling, untied.
    "llama-mha-linear": ("llama", dict(num_attention_heads=3, num_key_value_heads=3,
                                       attention_bias=True,
                                       rope_scaling={"rope_type": "linear", "factor": 2.0})),
    # Qwen3: explicit head_dim != hidden/heads, q/k norm, odd heads.
    "qwen3-headdim": ("qwen3", dict(head_dim=16, num_attention_heads=3, num_key_value_heads=1)),
    "qwen3-tied": ("qwen3", dict(head_dim=8, tie_word_embeddings=True)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
  family, overrides = CASES[request.param]
  path = str(tmp_path_factory.mktemp(request.param))
  model = save_hf_checkpoint(path, family, seed=len(request.param), **overrides)
  lm, params, tokenizer = hf.load(path)
  return model, lm, params


def test_config_translation(checkpoint):
  model, lm, _ = checkpoint
  c, hc = lm.config, model.config
  assert (c.num_heads, c.num_kv_heads, c.num_layers) == (
      hc.num_attention_heads, hc.num_key_value_heads, hc.num_hidden_layers)
  assert c.tie_word_embeddings == bool(hc.tie_word_embeddings)


def test_logits_match_transformers(checkpoint):
  model, lm, params = checkpoint
  tokens = random_tokens(np.random.RandomState(0), 3, 40, lm.vocab_size)
  with torch.no_grad():
    ref = model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()
  out = np.asarray(forward(lm, params, tokens))
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_greedy_continuation_matches_generate(checkpoint):
  model, lm, params = checkpoint
  rng = np.random.RandomState(1)
  prompts = [list(rng.randint(0, lm.vocab_size, size=n)) for n in (7, 19)]
  import jax
  out = sample(lm, params, prompts, key=jax.random.key(0), num_samples=2, max_new_tokens=12,
               temperature=0.0)
  for b, p in enumerate(prompts):
    with torch.no_grad():
      ref = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=12, min_new_tokens=12)
    expected = ref[0, len(p):].numpy()
    for n in range(2):
      np.testing.assert_array_equal(np.asarray(out.tokens[b, n]), expected)


def test_bfloat16_close_to_float32(tmp_path):
  import jax.numpy as jnp
  save_hf_checkpoint(str(tmp_path), "qwen2", seed=3)
  lm32, p32, _ = hf.load(str(tmp_path))
  lm16, p16, _ = hf.load(str(tmp_path), dtype="bfloat16")
  assert all(x.dtype == jnp.bfloat16 for x in __import__("jax").tree.leaves(p16))
  tokens = random_tokens(np.random.RandomState(0), 2, 16, lm32.vocab_size)
  a = np.asarray(forward(lm32, p32, tokens))
  b = np.asarray(forward(lm16, p16, tokens))
  # bfloat16 keeps ~3 significant digits; logits here are O(1).
  assert np.abs(a - b).max() < 0.1
  assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.9


def test_sharded_checkpoint_loads(tmp_path):
  model = save_hf_checkpoint(str(tmp_path), "llama", seed=5, max_shard_size="50KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  lm, params, _ = hf.load(str(tmp_path))
  tokens = random_tokens(np.random.RandomState(2), 1, 10, lm.vocab_size)
  with torch.no_grad():
    ref = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(np.asarray(forward(lm, params, tokens)), ref, atol=1e-4, rtol=0)
