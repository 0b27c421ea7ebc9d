"""Contract 1 of the design: a causal language model as pure functions over pytrees.

Everything above `tts_jax.models` (the sampler, the particle engine, potentials,
search) talks to a model only through this protocol. `LanguageModel` (the Flax NNX
decoders), `TabularLM` (the exact test model), value models (`ValueModel.as_lm()`)
and twist models implement it; their outputs per position may be next-token logits,
value logits or log-twists.

    logits, prefix = lm.prefill(params, prompt_tokens, prompt_lengths)   # once per prompt
    cache = lm.init_cache(prefix, num_samples, max_len, compact=True)    # N private suffixes
    logits, cache = lm.decode(params, tokens, cache, active)             # one token per sample
    cache = cache.gather(ancestors)                                      # resampling: suffixes move
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax


@runtime_checkable
class Cache(Protocol):
  """Per-sample decoding state of B prompts x N samples."""

  def gather(self, ancestors: jax.Array) -> "Cache":
    """The state of samples `ancestors` int32[B, N'] (indices within each prompt's N)."""


@runtime_checkable
class CausalLM(Protocol):
  """A model the sampler and the engine can run. Hashable (a static argument of jit)."""

  @property
  def vocab_size(self) -> int:
    """V, the width of the token axis of inputs and (for LMs) of the outputs."""

  @property
  def max_length(self) -> int:
    """The longest prompt + generation the model accepts."""

  def prefill(self, params: Any, tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, Any]:
    """tokens int32[B, Tp] right-padded, lengths int32[B] >= 1 -> (outputs at each prompt's
    last token float32[B, ...], the prompts' prefix state)."""

  def init_cache(self, prefix: Any, num_samples: int, max_len: int, compact: bool = False) -> Cache:
    """An empty cache of `max_len` generated tokens for `num_samples` samples per prompt."""

  def decode(self, params: Any, tokens: jax.Array, cache: Cache,
             active: jax.Array | None = None) -> tuple[jax.Array, Cache]:
    """tokens int32[B, N] (one per sample) -> (outputs float32[B, N, ...] after them, cache).
    Inactive samples (active bool[B, N] False) write nothing and do not advance."""
