"""FLOP accounting against XLA's own count of the compiled forward pass."""

import jax
import jax.numpy as jnp
import pytest

from tts_jax.eval.cost import forward_flops, kv_bytes_per_token, matmul_params, sampling_cost, scoring_cost
from tts_jax.models import ModelConfig, init


@pytest.mark.parametrize("tied", [False, True])
def test_forward_flops_match_xla_cost_analysis(tied):
  cfg = ModelConfig(vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=3, num_heads=4,
                    num_kv_heads=2, head_dim=32, tie_word_embeddings=tied, max_position_embeddings=256)
  lm, params = init(cfg)
  t = 64
  compiled = jax.jit(lm.forward).lower(params, jnp.zeros((1, t), jnp.int32)).compile()
  xla = compiled.cost_analysis()
  xla = xla[0] if isinstance(xla, (list, tuple)) else xla
  ours = forward_flops(cfg, t)
  # XLA also counts the full (unmasked) T x T score matrix, softmax and elementwise ops; the
  # matmul term dominates, so the two agree to within ~15%.
  assert 0.85 < ours / xla["flops"] < 1.15, (ours, xla["flops"])


def test_cost_bookkeeping():
  cfg = ModelConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                    num_kv_heads=1, head_dim=8)
  assert matmul_params(cfg) == cfg.num_params() - 100 * 16
  c = sampling_cost(cfg, 10, [5, 7])
  assert (c.prompt_tokens, c.generated_tokens) == (10, 12)
  assert c.flops == pytest.approx(forward_flops(cfg, 10) + forward_flops(cfg, 5, 10) + forward_flops(cfg, 7, 10))
  assert c.kv_bytes == kv_bytes_per_token(cfg) * 22 == 2 * 2 * 1 * 8 * 4 * 22
  v = scoring_cost(cfg, 10, [5, 7])
  assert v.verifier_tokens == 32 and (c + v).flops == pytest.approx(c.flops + v.flops)
  # Decoding token t+1 after t tokens costs the same as the last token of a t+1 prefill.
  assert forward_flops(cfg, 1, 9) == pytest.approx(forward_flops(cfg, 10) - forward_flops(cfg, 9))
