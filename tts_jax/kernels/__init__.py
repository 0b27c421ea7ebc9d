"""Attention: the pure-jnp reference (partial softmax + log-sum-exp merge) and the Pallas
kernels (causal flash prefill, shared-prefix cascade decode).

Each kernel has a pure-jnp `*_reference` with the same contract, a block-size config,
and runs with `interpret=True` on CPU. `use_pallas(impl)` is the model's dispatch rule.
"""

from tts_jax.kernels.cascade_decode import (CascadeConfig, cascade_decode, cascade_decode_reference,
                                            prefix_attention)
from tts_jax.kernels.dispatch import use_pallas
from tts_jax.kernels.flash_prefill import FlashConfig, flash_prefill, flash_prefill_reference
from tts_jax.kernels.reference import attend_partial, causal_mask, merge_partials


__all__ = ["CascadeConfig", "cascade_decode", "cascade_decode_reference", "prefix_attention", "FlashConfig",
           "flash_prefill", "flash_prefill_reference", "use_pallas", "attend_partial", "causal_mask",
           "merge_partials"]
