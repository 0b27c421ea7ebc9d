"""Attention: the pure-jnp reference (partial softmax + log-sum-exp merge) and the Pallas
kernels (causal flash prefill, shared-prefix cascade decode).

Each kernel has a pure-jnp `*_reference` with the same contract and runs with
`interpret=True` on CPU; `plan` tiles and pads any shape per backend (and reports each
configuration's on-chip bytes); `attention_path` is the model's dispatch rule. Keys and
values are head-major, [..., Hkv, T, D], as the KV caches hold them (`heads_major`).
"""

from tts_jax.kernels.cascade_decode import cascade_decode, cascade_decode_reference, prefix_attention
from tts_jax.kernels.dispatch import MEASURED_FASTER, AttentionPath, attention_path
from tts_jax.kernels.flash_prefill import flash_prefill, flash_prefill_reference
from tts_jax.kernels.plan import H100, TPU, DecodePlan, PrefillPlan, Target, UnsupportedShape, plan_decode, plan_prefill
from tts_jax.kernels.reference import attend_causal, attend_partial, causal_mask, heads_major, merge_partials


__all__ = ["cascade_decode", "cascade_decode_reference", "prefix_attention", "MEASURED_FASTER", "AttentionPath",
           "attention_path", "flash_prefill", "flash_prefill_reference", "H100", "TPU", "DecodePlan", "PrefillPlan",
           "Target", "UnsupportedShape", "plan_decode", "plan_prefill", "attend_causal", "attend_partial", "causal_mask",
           "heads_major", "merge_partials"]
