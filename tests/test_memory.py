"""The memory planner: exact byte counts of params and caches on known shapes, the refusal
error that names the numbers, and a run that cannot fit refusing before it writes anything."""

import dataclasses

import pytest

from tts_jax.models.config import ModelConfig
from tts_jax.models.memory import GiB, device_memory, kv_bytes_per_token, plan_memory

# Qwen2.5-Math-1.5B's shapes (28 layers, 2 KV heads of 128, vocab 151936, tied).
QWEN_1_5B = ModelConfig(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                        num_kv_heads=2, head_dim=128, attention_bias=True, tie_word_embeddings=True,
                        max_position_embeddings=4096, dtype="bfloat16")
# Qwen2.5-Math-PRM-7B's trunk (28 layers, 4 KV heads of 128, vocab 152064).
QWEN_7B = ModelConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
                      num_kv_heads=4, head_dim=128, attention_bias=True, max_position_embeddings=4096,
                      dtype="bfloat16")


def test_byte_counts_of_the_puri_configuration():
  assert kv_bytes_per_token(QWEN_1_5B) == 28 * 2 * 2 * 128 * 2 == 28672  # 28 KiB per token in bfloat16
  assert 1.50e9 < QWEN_1_5B.num_params() < 1.56e9 and 7.0e9 < QWEN_7B.num_params() < 7.7e9
  plan = plan_memory(QWEN_1_5B, [QWEN_7B], prompts=1, num_particles=32, prompt_len=256, max_new_tokens=1024)
  items = dict(plan.items)
  assert items["policy suffix KV (1 x 32 x 1024 tokens)"] == 32 * 1024 * 28672
  assert items["policy prompt KV (1 x 256 tokens)"] == 256 * 28672
  assert items["verifier 0 params (7.62B, bfloat16)"] == QWEN_7B.num_params() * 2
  assert 17 * GiB < plan.total < 22 * GiB  # 3 + 15 GiB of params, ~1 + 2 GiB of caches, logits
  paged = plan_memory(QWEN_1_5B, [QWEN_7B], prompts=1, num_particles=32, prompt_len=256, max_new_tokens=1024,
                      page_size=16, num_pages=512)
  assert dict(paged.items)["policy paged suffix KV (1 x 512 pages of 16)"] == 512 * 16 * 28672
  split = plan_memory(QWEN_1_5B, [QWEN_7B], prompts=8, num_particles=32, prompt_len=256, max_new_tokens=1024,
                      data_devices=4, model_devices=2)
  assert dict(split.items)["verifier 0 params (7.62B, bfloat16)"] == QWEN_7B.num_params() * 2 // 2
  assert "policy suffix KV (2 x 32 x 1024 tokens)" in dict(split.items)  # 8 prompts over 4 data devices


def test_a_step_tag_prm_is_planned_as_rereading():
  """A PRM that re-reads the particles' texts (a step-tag PRM in the engines) holds no suffix
  KV but one layer's activations over a chunk of the N x (2 T + 16) ids: exact counts on the
  Puri shapes."""
  plan = plan_memory(QWEN_1_5B, prompts=1, num_particles=32, prompt_len=256, max_new_tokens=1024,
                     rereading=[QWEN_7B])
  items = dict(plan.items)
  assert not any(k.startswith("verifier 0") for k in items)
  assert items["re-reading verifier 0 params (7.62B, bfloat16)"] == QWEN_7B.num_params() * 2
  assert items["re-reading verifier 0 prompt KV (1 x 256 tokens)"] == 256 * kv_bytes_per_token(QWEN_7B)
  # Read 32768 ids at a time (REREAD_TOKENS), not all 32 x 2064 at once.
  assert items["re-reading verifier 0 activations (32768 of 1 x 32 x 2064 ids at once)"] == \
      32768 * (3 * 18944 + 2 * 3584) * 4
  plan_memory(QWEN_1_5B, prompts=1, num_particles=4, prompt_len=256, max_new_tokens=2048, rereading=[QWEN_7B])
  with pytest.raises(ValueError, match="re-reading verifier 0: prompt_len 2100 \\+ max_new_tokens 2048 exceeds"):
    plan_memory(dataclasses.replace(QWEN_1_5B, max_position_embeddings=8192), prompts=1, num_particles=4,
                prompt_len=2100, max_new_tokens=2048, rereading=[QWEN_7B])


def test_a_plan_that_cannot_fit_names_its_numbers():
  plan = plan_memory(QWEN_1_5B, [QWEN_7B], prompts=8, num_particles=32, prompt_len=256, max_new_tokens=1024)
  with pytest.raises(MemoryError, match=r"needs \d+\.\d\d GiB of device memory but the device has 16\.00 GiB"):
    plan.check(device_bytes=16 * GiB)
  plan_memory(QWEN_1_5B, prompts=1, num_particles=4, prompt_len=64, max_new_tokens=64).check(device_bytes=16 * GiB)
  with pytest.raises(ValueError, match="prompt_len 4000 \\+ max_new_tokens 1024 = 5024 exceeds its context of 4096"):
    plan_memory(QWEN_1_5B, prompts=1, num_particles=4, prompt_len=4000, max_new_tokens=1024)
  with pytest.raises(ValueError, match="num_particles must be an int >= 1, got 0"):
    plan_memory(QWEN_1_5B, prompts=1, num_particles=0, prompt_len=4, max_new_tokens=4)


def test_device_memory_override(monkeypatch):
  monkeypatch.setenv("TTS_JAX_DEVICE_MEMORY", "16GiB")
  assert device_memory() == 16 * GiB
  monkeypatch.setenv("TTS_JAX_DEVICE_MEMORY", "lots")
  with pytest.raises(ValueError, match="TTS_JAX_DEVICE_MEMORY='lots'"):
    device_memory()
  monkeypatch.delenv("TTS_JAX_DEVICE_MEMORY")
  assert device_memory() is None  # CPU: not planned


def test_a_run_that_cannot_fit_refuses_before_writing(monkeypatch, tmp_path):
  from tts_jax.eval import Experiment, MajorityVote
  from tts_jax.eval.runner import run_experiment
  from tts_jax.tasks import ModChain
  exp = Experiment(name="m", task=ModChain(), methods=(MajorityVote(),), num_problems=2, batch_problems=2,
                   budgets=(1, 4), out_dir=str(tmp_path / "out"))
  monkeypatch.setenv("TTS_JAX_DEVICE_MEMORY", "1MiB")
  with pytest.raises(MemoryError, match="but the device has 0.00 GiB"):
    run_experiment(exp, quiet=True)
  assert not (tmp_path / "out").exists()
  big = dataclasses.replace(exp, max_new_tokens=100000)  # beyond the shipped policy's context
  monkeypatch.delenv("TTS_JAX_DEVICE_MEMORY")
  with pytest.raises(ValueError, match="exceeds its context"):
    run_experiment(big, quiet=True)
  assert not (tmp_path / "out").exists()
