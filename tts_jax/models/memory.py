"""How much device memory a run needs, before it starts: params, KV caches, per-particle state.

    plan = plan_memory(policy_cfg, [prm_cfg], prompts=8, num_particles=32, prompt_len=512,
                       max_new_tokens=1024, page_size=16)
    print(plan.format())
    plan.check(device_bytes=16 * 2**30)     # MemoryError naming the numbers if it cannot fit

The count follows the library's layouts: each model's params in its dtype; per prompt one
prefix KV (shared by its particles) and per particle a suffix KV of max_new_tokens slots
(contiguous) or the paged pool (num_pages x page_size slots per prompt, default: no
sharing); for the verifiers the same caches (a PRM scores particles incrementally); the
engine's per-particle state (float32 pending logits [B, N, V] and per-token log-probs);
and the largest transient of a prefill (one layer's activations and attention scores over
the prompt). It is an estimate of what XLA must hold at once, not of its workspace: keep a
margin (`check(headroom=0.9)` uses 90% of the device).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

import jax
import numpy as np

from tts_jax.kernels.reference import CAUSAL_BLOCK
from tts_jax.models.config import ModelConfig

GiB = 2**30
# Ids a re-reading verifier (`tts_jax.verifiers.StepTagPotential`) runs through the model at
# once: its particles are read in chunks of at most this many ids (at least one row per prompt).
REREAD_TOKENS = 32768


def kv_bytes_per_token(config: ModelConfig) -> int:
  """Keys and values of one token over all layers, in the model's dtype."""
  return config.num_layers * 2 * config.num_kv_heads * config.head_dim * config.jnp_dtype.itemsize


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per item (name -> bytes) and their total."""

  items: tuple[tuple[str, int], ...]

  @property
  def total(self) -> int:
    return sum(b for _, b in self.items)

  def format(self) -> str:
    w = max([44] + [len(name) for name, _ in self.items])
    rows = [f"  {name:<{w}} {b / GiB:9.3f} GiB" for name, b in self.items]
    return "\n".join(["device memory needed:", *rows, f"  {'total':<{w}} {self.total / GiB:9.3f} GiB"])

  def check(self, device_bytes: int | None = None, headroom: float = 0.9) -> None:
    """Raises MemoryError, naming every item, if the total exceeds `headroom` x the device's
    memory (`device_bytes`, default: what `device_memory()` reports; unknown: no check)."""
    device_bytes = device_memory() if device_bytes is None else device_bytes
    if device_bytes is None or self.total <= headroom * device_bytes:
      return
    raise MemoryError(f"this run needs {self.total / GiB:.2f} GiB of device memory but the device has "
                      f"{device_bytes / GiB:.2f} GiB ({headroom:.0%} usable): reduce the batch, N, the context, "
                      f"or use bfloat16 / a paged cache / a model axis.\n{self.format()}")


def device_memory(device=None) -> int | None:
  """Bytes of memory of `device` (default: the first local device): $TTS_JAX_DEVICE_MEMORY
  if set (bytes, or with a KiB/MiB/GiB suffix: to plan for another device, e.g. a 16 GiB
  TPU v5e chip from a laptop), else the accelerator's limit, else None (CPU: host memory
  is not planned)."""
  env = os.environ.get("TTS_JAX_DEVICE_MEMORY")
  if env:
    m = re.fullmatch(r"\s*([0-9.]+)\s*(KiB|MiB|GiB|TiB)?\s*", env)
    if not m:
      raise ValueError(f"TTS_JAX_DEVICE_MEMORY={env!r}: expected bytes or a number with KiB/MiB/GiB/TiB")
    scale = {None: 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[m.group(2)]
    return int(float(m.group(1)) * scale)
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  return None if not stats else int(stats.get("bytes_limit", 0)) or None


def plan_memory(policy: ModelConfig, verifiers: Sequence[ModelConfig] = (), *, prompts: int, num_particles: int,
                prompt_len: int, max_new_tokens: int, page_size: int = 0, num_pages: int = 0,
                data_devices: int = 1, model_devices: int = 1,
                rereading: Sequence[ModelConfig] = ()) -> MemoryPlan:
  """The memory one device needs for `prompts` prompts x `num_particles` particles of a
  policy (and incremental verifiers), prompts padded to `prompt_len`, generations up to
  `max_new_tokens`. page_size > 0: paged suffix caches of `num_pages` pages per prompt (0:
  enough for no sharing). data_devices / model_devices: the mesh (prompts split over data,
  params and KV heads over model). rereading: verifiers that re-read every particle's text
  at each step end instead (a step-tag PRM, `tts_jax.verifiers.StepTagPotential`): no
  suffix KV, but one layer's activations over a chunk of the N x (2 max_new_tokens + 16) ids
  per prompt it re-reads (`REREAD_TOKENS` at a time)."""
  for name, v in (("prompts", prompts), ("num_particles", num_particles), ("prompt_len", prompt_len),
                  ("max_new_tokens", max_new_tokens), ("data_devices", data_devices),
                  ("model_devices", model_devices)):
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"plan_memory: {name} must be an int >= 1, got {v!r}")
  b, n = -(-prompts // data_devices), num_particles
  items = []
  for role, cfg in [("policy", policy)] + [(f"verifier {i}", c) for i, c in enumerate(verifiers)]:
    context = prompt_len + max_new_tokens
    if context > cfg.max_position_embeddings:
      raise ValueError(f"{role}: prompt_len {prompt_len} + max_new_tokens {max_new_tokens} = {context} exceeds its "
                       f"context of {cfg.max_position_embeddings} positions")
    per_token = kv_bytes_per_token(cfg) // model_devices
    items.append((f"{role} params ({cfg.num_params() / 1e9:.2f}B, {cfg.dtype})",
                  cfg.num_params() * cfg.jnp_dtype.itemsize // model_devices))
    items.append((f"{role} prompt KV ({b} x {prompt_len} tokens)", b * prompt_len * per_token))
    if page_size > 0:
      pages = num_pages or n * -(-max_new_tokens // page_size)
      items.append((f"{role} paged suffix KV ({b} x {pages} pages of {page_size})", b * pages * page_size * per_token))
    else:
      items.append((f"{role} suffix KV ({b} x {n} x {max_new_tokens} tokens)", b * n * max_new_tokens * per_token))
    # A prefill's largest transient: one layer's MLP activations or attention scores (float32).
    h, f, heads = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads // model_devices
    items.append((f"{role} prefill activations", b * prompt_len * max(3 * f // model_devices + 2 * h,
                                                                       heads * prompt_len) * 4))
  for i, cfg in enumerate(rereading):
    width = 2 * max_new_tokens + 16  # ids a re-read may take (`StepTagPotential`), at most
    if prompt_len + max_new_tokens > cfg.max_position_embeddings:
      raise ValueError(f"re-reading verifier {i}: prompt_len {prompt_len} + max_new_tokens {max_new_tokens} exceeds "
                       f"its context of {cfg.max_position_embeddings} positions")
    h, f, heads = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads // model_devices
    items.append((f"re-reading verifier {i} params ({cfg.num_params() / 1e9:.2f}B, {cfg.dtype})",
                  cfg.num_params() * cfg.jnp_dtype.itemsize // model_devices))
    items.append((f"re-reading verifier {i} prompt KV ({b} x {prompt_len} tokens)",
                  b * prompt_len * (kv_bytes_per_token(cfg) // model_devices)))
    # A re-read: the particles' ids a chunk at a time (`REREAD_TOKENS`, at least one row per
    # prompt); one layer's MLP activations, or the attention scores of one query block
    # (`kernels.reference.CAUSAL_BLOCK` rows) over all its keys.
    chunk = min(b * n * width, max(REREAD_TOKENS, b * width))
    items.append((f"re-reading verifier {i} activations ({chunk} of {b} x {n} x {width} ids at once)",
                  chunk * max(3 * f // model_devices + 2 * h, heads * CAUSAL_BLOCK) * 4))
  v = policy.vocab_size
  items.append((f"particle state ({b} x {n}: logits over {v}, per-token log-probs)",
                b * n * (v * 4 + max_new_tokens * (4 + 4 + 4))))
  return MemoryPlan(tuple(items))
