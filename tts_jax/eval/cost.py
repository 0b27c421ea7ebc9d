"""Compute accounting: tokens, FLOPs and KV-cache bytes of sampling, scoring and search.

Every experiment method reports one `Cost` per problem: `pool_cost` for methods that
select among pre-drawn samples (expected cost of the samples they use), `search_cost`
for runs of the particle engine (the tokens actually decoded).

FLOPs follow the usual transformer count (Kaplan et al. 2020): a forward pass over
one token at context length c costs 2 * N_matmul + 4 * L * c * (heads * head_dim),
N_matmul being the parameters used in matmuls (everything but the embedding
lookup; the LM head counts). Prompts are prefilled once per prompt (the KV cache
is shared by its samples); verifiers re-read prompt + completion per sample.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from tts_jax.models.config import ModelConfig


def matmul_params(config: ModelConfig, head_outputs: int | None = None) -> int:
  """Parameters that take part in matmuls per token (embedding lookup excluded).

  head_outputs: width of the output head (default vocab_size; 1 for a value head).
  """
  out = config.vocab_size if head_outputs is None else head_outputs
  emb = config.vocab_size * config.hidden_size
  total = config.num_params() - emb * (1 if config.tie_word_embeddings else 2)
  return total + config.hidden_size * out


def forward_flops(config: ModelConfig, num_tokens: float, context_start: float = 0.0,
                  head_outputs: int | None = None) -> float:
  """FLOPs of a causal forward pass over `num_tokens` tokens that follow `context_start`
  tokens already in the cache (attention to all earlier tokens and itself)."""
  d_attn = config.num_heads * config.head_dim
  # sum over tokens of their context length: context_start + 1, ..., context_start + num_tokens
  ctx_sum = num_tokens * context_start + num_tokens * (num_tokens + 1) / 2
  return 2.0 * matmul_params(config, head_outputs) * num_tokens + 4.0 * config.num_layers * d_attn * ctx_sum


def kv_bytes_per_token(config: ModelConfig) -> int:
  return 2 * config.num_layers * config.num_kv_heads * config.head_dim * config.jnp_dtype.itemsize


@dataclasses.dataclass(frozen=True)
class Cost:
  """Compute of one method on one problem (expected values when a budget is subsampled)."""

  prompt_tokens: float = 0.0
  generated_tokens: float = 0.0
  verifier_tokens: float = 0.0
  flops: float = 0.0
  kv_bytes: float = 0.0

  def __add__(self, other: "Cost") -> "Cost":
    return Cost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

  def scale(self, s: float) -> "Cost":
    return Cost(*(a * s for a in dataclasses.astuple(self)))

  def asdict(self) -> dict:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # flat: no deep copies


def sampling_cost(config: ModelConfig, prompt_len: int, completion_lens) -> Cost:
  """One prompt prefilled once + one sample per entry of `completion_lens` (shared prefix)."""
  flops = forward_flops(config, prompt_len)
  gen = 0.0
  for n in completion_lens:
    flops += forward_flops(config, n, context_start=prompt_len)
    gen += n
  kv = kv_bytes_per_token(config) * (prompt_len + gen)
  return Cost(prompt_tokens=prompt_len, generated_tokens=gen, flops=flops, kv_bytes=kv)


def scoring_cost(config: ModelConfig, prompt_len: int, completion_lens) -> Cost:
  """A value model scoring each sample: a full forward over prompt + completion."""
  flops, toks = 0.0, 0.0
  for n in completion_lens:
    flops += forward_flops(config, prompt_len + n, head_outputs=1)
    toks += prompt_len + n
  return Cost(verifier_tokens=toks, flops=flops)


def pool_cost(policy: ModelConfig, verifiers: Sequence[ModelConfig], prompt_lens, completion_lens,
              used) -> list[list[Cost]]:
  """Expected compute of `used` samples drawn from pools whose samples have lengths
  `completion_lens` (the pool means of per-sample costs), plus one prefill of each prompt;
  each verifier model re-reads prompt + completion of every sample used.

  prompt_lens: int[P]; completion_lens: int[P, n]; used: float[K, P] (K budgets) ->
  Cost per budget and problem ([K][P]). Vectorised over problems and budgets.
  """
  plen = np.asarray(prompt_lens, np.float64)
  lens = np.asarray(completion_lens, np.float64)
  used = np.asarray(used, np.float64)
  per_sample = forward_flops(policy, lens, context_start=plen[:, None]).mean(-1)
  flops = forward_flops(policy, plen) + used * per_sample
  verifier_tokens = np.zeros_like(used)
  for vc in verifiers:
    flops = flops + used * forward_flops(vc, plen[:, None] + lens, head_outputs=1).mean(-1)
    verifier_tokens = verifier_tokens + used * (plen + lens.mean(-1))
  generated = used * lens.mean(-1)
  kv = kv_bytes_per_token(policy) * (plen + generated)
  return [[Cost(prompt_tokens=float(plen[i]), generated_tokens=float(generated[b, i]),
                verifier_tokens=float(verifier_tokens[b, i]), flops=float(flops[b, i]), kv_bytes=float(kv[b, i]))
           for i in range(used.shape[1])] for b in range(used.shape[0])]


def chains_cost(policy: ModelConfig, prompt_lens, lengths, weights) -> list[list[Cost]]:
  """Expected compute of chains cut short (e.g. pruned): each prompt prefilled once, chain j
  of subset s generating lengths[k, p, s, j] tokens (0 for chains not started), the
  expectation over subsets weighted by `weights`.

  prompt_lens: int[P]; lengths: int[K, P, S, n]; weights: float[K, S] -> Cost per budget and
  problem ([K][P]).
  """
  plen = np.asarray(prompt_lens, np.float64)
  lens = np.asarray(lengths, np.float64)
  w = np.asarray(weights, np.float64)
  w = (w / w.sum(-1, keepdims=True))[:, None, :]  # [K, 1, S]
  flops = forward_flops(policy, plen) + (forward_flops(policy, lens, context_start=plen[None, :, None, None])
                                         .sum(-1) * w).sum(-1)
  generated = (lens.sum(-1) * w).sum(-1)
  kv = kv_bytes_per_token(policy) * (plen + generated)
  return [[Cost(prompt_tokens=float(plen[i]), generated_tokens=float(generated[b, i]), flops=float(flops[b, i]),
                kv_bytes=float(kv[b, i])) for i in range(lens.shape[1])] for b in range(lens.shape[0])]


def search_cost(policy: ModelConfig, verifier: ModelConfig | None, prompt_len: int, decoded: float,
                num_particles: int, verifier_read: float = 0.0) -> Cost:
  """Compute of one engine run on one prompt: one prefill, `decoded` policy tokens over N
  particles (discarded particles included), and, with a verifier model scored incrementally
  beside the policy, its prefill and the same tokens once each. A verifier that re-reads
  its texts instead (`verifier_read` > 0: the run's `Particles.verified`, e.g. a step-tag
  PRM) counts those tokens, its FLOPs as that many tokens of N-particle-long completions
  after the prompt (exact in the matmuls; the attention of the shorter early reads is
  overcounted)."""
  per_particle = decoded / num_particles
  flops = forward_flops(policy, prompt_len) + num_particles * forward_flops(policy, per_particle,
                                                                            context_start=prompt_len)
  verifier_tokens = 0.0
  if verifier is not None:
    reads = num_particles if not verifier_read else max(verifier_read - prompt_len, 0.0) / max(per_particle, 1.0)
    flops += (forward_flops(verifier, prompt_len, head_outputs=1)
              + reads * forward_flops(verifier, per_particle, prompt_len, 1))
    verifier_tokens = float(verifier_read) if verifier_read else float(prompt_len) + decoded
  return Cost(prompt_tokens=float(prompt_len), generated_tokens=float(decoded), verifier_tokens=verifier_tokens,
              flops=float(flops), kv_bytes=float(kv_bytes_per_token(policy) * (prompt_len + decoded)))
