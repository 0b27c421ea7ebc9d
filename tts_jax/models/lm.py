"""The LanguageModel contract: pure prefill / decode over pytrees.

    lm, params = init(config, seed)
    logits, prefix = lm.prefill(params, prompt_tokens, prompt_lengths)   # once per prompt
    cache = lm.init_cache(prefix, num_samples=N, max_len=T)             # N private suffixes
    logits, cache = lm.decode(params, tokens, cache)                    # one token per sample

The KV cache keeps each prompt's keys and values once (`PrefixCache`, shared by
all N samples of that prompt) and a private suffix cache per sample. A decode
step attends over both and merges them by log-sum-exp, so the prompt's KV is
read once per prompt per step, not N times. Suffix slots are written at one
shared step index; a per-slot mask says which slots hold real tokens, so
samples that are finished (or waiting at a step boundary) simply write nothing.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
from flax import nnx, struct

from tts_jax.kernels import (attend_causal, attend_partial, attention_path, cascade_decode, causal_mask, flash_prefill,
                             merge_partials)
from tts_jax.kernels.blocks import pad_axis
from tts_jax.kernels.reference import heads_major
from tts_jax.models.config import ModelConfig
from tts_jax.models.paged import PagedKVCache, init_paged_cache
from tts_jax.models.rope import rope_tables
from tts_jax.models.transformer import Decoder


@struct.dataclass
class PrefixCache:
  """Prompt KV, one copy per prompt.

  k, v: tuples over layers of [B, Hkv, Tp, D] (head-major, as every cache:
  `tts_jax.kernels.reference`); lengths: int32[B] valid prompt tokens (prompts are
  right-padded to Tp).
  """

  k: tuple
  v: tuple
  lengths: jax.Array


@struct.dataclass
class KVCache:
  """Shared prompt KV plus N private suffixes per prompt.

  prefix: the prompts' `PrefixCache` (batch B).
  k, v: tuples over layers of [B, N, Hkv, Ts, D] suffix keys/values (head-major).
  mask: bool[B, N, Ts], True at slots that hold a real token.
  lengths: int32[B, N] real suffix tokens so far (position offset after the prompt).
  step: int32[] next slot to write (shared by all samples).
  compact: static; False: every decode writes slot `step` (for samples that advance
    together); True: each sample writes its own slot `lengths` (inactive samples write
    nothing; for particles that advance unevenly: capacity = tokens per sample). Both are
    one in-place scatter per layer.
  """

  prefix: PrefixCache
  k: tuple
  v: tuple
  mask: jax.Array
  lengths: jax.Array
  step: jax.Array
  compact: bool = struct.field(pytree_node=False, default=False)

  @property
  def capacity(self) -> int:
    """Ts, the number of suffix slots."""
    return self.mask.shape[-1]

  def grow(self, capacity: int) -> "KVCache":
    """The same cache with `capacity` >= Ts suffix slots (new slots empty): decoding can start
    with a small cache, whose steps read fewer slots, and grow it when it fills."""
    extra = capacity - self.capacity
    if extra < 0:
      raise ValueError(f"a cache of {self.capacity} slots cannot shrink to {capacity}")
    pad = lambda x, axis: jnp.pad(x, [(0, extra) if i == axis else (0, 0) for i in range(x.ndim)])  # noqa: E731
    kv = lambda xs: tuple(pad(x, 3) for x in xs)  # noqa: E731
    return self.replace(k=kv(self.k), v=kv(self.v), mask=pad(self.mask, 2))

  def gather(self, ancestors: jax.Array) -> "KVCache":
    """The cache of particles `ancestors` int32[B, N'] (indices into each prompt's own N
    samples): suffix state only moves; the shared prompt KV is untouched. N' may differ from N."""
    take = lambda x: jnp.take_along_axis(x, ancestors.reshape(ancestors.shape + (1,) * (x.ndim - 2)), axis=1)
    return KVCache(prefix=self.prefix, k=tuple(take(x) for x in self.k), v=tuple(take(x) for x in self.v),
                   mask=take(self.mask), lengths=take(self.lengths), step=self.step, compact=self.compact)


PREFIX_ALIGN = 128  # prompt KV length multiple on the Pallas decode path (GPU and TPU key blocks divide it)


def _in_precision(method):
  """Traces a LanguageModel method under its config's matmul precision (float32 by default,
  so a float32 model is float32 on GPUs too, whose default for float32 matmuls is TF32)."""

  @functools.wraps(method)
  def wrapped(self, *args, **kwargs):
    precision = self.config.matmul_precision
    with jax.default_matmul_precision(None if precision == "default" else precision):
      return method(self, *args, **kwargs)

  return wrapped


@dataclasses.dataclass(frozen=True)
class LanguageModel:
  """A decoder LM as pure functions of (params, inputs). Hashable: a valid jit static arg.

  Attributes:
    config: the architecture.
    graphdef: the Flax NNX graph definition (params live outside, as a pytree).
  """

  config: ModelConfig
  graphdef: nnx.GraphDef

  @property
  def vocab_size(self) -> int:
    return self.config.vocab_size

  @property
  def max_length(self) -> int:
    """The longest prompt + generation (max_position_embeddings)."""
    return self.config.max_position_embeddings

  def _module(self, params) -> Decoder:
    return nnx.merge(self.graphdef, params)

  def _scale(self) -> float:
    return self.config.head_dim ** -0.5

  def _causal_attend(self, mask, lengths):
    """Causal self-attention over right-padded rows: the Pallas flash kernel or XLA."""
    path = attention_path(self.config.attention_impl, "prefill")
    scale = self._scale()

    def attend(layer, q, k, v):  # k, v: [B, Hkv, T, D]
      if path.pallas:
        return flash_prefill(q, k, v, lengths, scale=scale, interpret=path.interpret, platform=path.platform)[0]
      return attend_causal(q, k, v, mask, scale)[0]

    return attend

  @_in_precision
  def forward(self, params, tokens: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    """Full-sequence logits without a cache.

    Args:
      params: the model's params pytree.
      tokens: int32[B, T], right-padded.
      lengths: int32[B] valid tokens per row (default: all T).

    Returns:
      float32[B, T, V] logits (rows past a sequence's length are meaningless).
    """
    b, t = tokens.shape
    lengths = jnp.full((b,), t, jnp.int32) if lengths is None else lengths
    mask = causal_mask(lengths, t)
    cos, sin = rope_tables(self.config, jnp.broadcast_to(jnp.arange(t), (b, t)))

    causal = self._causal_attend(mask, lengths)
    attend = lambda layer, q, k, v: causal(layer, q, heads_major(k), heads_major(v))  # noqa: E731
    model = self._module(params)
    return model.output(model.hidden(tokens, cos, sin, attend))

  @_in_precision
  def prefill(self, params, tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, PrefixCache]:
    """Runs the prompts once and keeps their KV.

    Args:
      params: the model's params pytree.
      tokens: int32[B, Tp] right-padded prompts.
      lengths: int32[B] prompt lengths (>= 1).

    Returns:
      (logits float32[B, V] at each prompt's last token, PrefixCache).
    """
    chex.assert_rank(tokens, 2)
    b, t = tokens.shape
    mask = causal_mask(lengths, t)
    cos, sin = rope_tables(self.config, jnp.broadcast_to(jnp.arange(t), (b, t)))
    ks, vs = [], []

    causal = self._causal_attend(mask, lengths)

    def attend(layer, q, k, v):
      k, v = heads_major(k), heads_major(v)  # [B, Hkv, T, D], the cache's layout
      ks.append(k)
      vs.append(v)
      return causal(layer, q, k, v)

    model = self._module(params)
    h = model.hidden(tokens, cos, sin, attend)
    last = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)[:, 0]
    if attention_path(self.config.attention_impl, "decode").pallas:
      # Keep the prompt KV a whole number of the decode kernel's key blocks, so that
      # decoding never pads (copies) it.
      size = -(-t // PREFIX_ALIGN) * PREFIX_ALIGN
      ks, vs = [pad_axis(x, 2, size) for x in ks], [pad_axis(x, 2, size) for x in vs]
    return model.output(last), PrefixCache(k=tuple(ks), v=tuple(vs), lengths=lengths.astype(jnp.int32))

  def init_cache(self, prefix: PrefixCache, num_samples: int, max_len: int, compact: bool = False) -> KVCache:
    """An empty suffix cache of `max_len` slots for `num_samples` samples per prompt
    (see `KVCache.compact`)."""
    c = self.config
    b = prefix.lengths.shape[0]
    shape = (b, num_samples, c.num_kv_heads, max_len, c.head_dim)
    zeros = tuple(jnp.zeros(shape, c.jnp_dtype) for _ in range(c.num_layers))
    return KVCache(prefix=prefix, k=zeros, v=tuple(jnp.zeros_like(x) for x in zeros),
                   mask=jnp.zeros((b, num_samples, max_len), bool),
                   lengths=jnp.zeros((b, num_samples), jnp.int32), step=jnp.zeros((), jnp.int32),
                   compact=compact)

  @_in_precision
  def decode(self, params, tokens: jax.Array, cache: KVCache,
             active: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
    """Feeds one token per sample.

    Args:
      params: the model's params pytree.
      tokens: int32[B, N], the next token of every sample.
      cache: the KVCache (its `step`, or with `compact` every active sample's `lengths`,
        must be < capacity).
      active: bool[B, N]; inactive samples write no KV and do not advance (their
        logits are computed but meaningless). Default: all active.

    Returns:
      (logits float32[B, N, V] for the token after `tokens`, updated cache).
    """
    chex.assert_rank(tokens, 2)
    b, n = tokens.shape
    if active is None:
      active = jnp.ones((b, n), bool)
    prefix = cache.prefix
    positions = prefix.lengths[:, None] + cache.lengths  # [B, N]
    cos, sin = rope_tables(self.config, positions[..., None])
    if isinstance(cache, PagedKVCache):
      return self._decode_paged(params, tokens, cache, active, cos, sin)
    step = cache.step
    rows, cols = jnp.arange(b)[:, None], jnp.arange(n)[None, :]
    if cache.compact:
      here = jax.nn.one_hot(cache.lengths, cache.capacity, dtype=bool) & active[..., None]  # [B, N, Ts]
      mask = cache.mask | here
      slots = jnp.where(active, cache.lengths, cache.capacity)  # out of range: not written
    else:
      mask = jax.lax.dynamic_update_slice_in_dim(cache.mask, active[..., None], step, axis=2)
      slots = jnp.broadcast_to(step, (b, n))
    new_k, new_v = [], []

    def write(c, x):
      """x [B, N, 1, Hkv, D] into slot slots[b, n] of c [B, N, Hkv, Ts, D]. A scatter even where
      every sample writes slot `step`: XLA:CPU fuses a dynamic-update-slice into each of its
      consumers (the new cache, the attention's reshape of it), and each fused update works on
      its own copy of the whole cache (4 copies per layer per step; a decode step at
      benchmarks/sampling.py's shapes took 16.7-17.1 ms against 14.3-14.5 ms with the scatter,
      which XLA updates in place)."""
      return c.at[rows, cols, :, slots].set(x[:, :, 0].astype(c.dtype), mode="drop")

    def attend(layer, q, k, v):
      # q: [B, N, 1, Hkv, G, D]; k, v: [B, N, 1, Hkv, D]; inactive compact rows are dropped
      sk, sv = write(cache.k[layer], k), write(cache.v[layer], v)
      new_k.append(sk)
      new_v.append(sv)
      return self._shared_prefix_attend(q, prefix, layer, sk, sv, mask)

    model = self._module(params)
    h = model.hidden(tokens[..., None], cos, sin, attend)[:, :, 0]
    new_cache = KVCache(prefix=prefix, k=tuple(new_k), v=tuple(new_v), mask=mask,
                        lengths=cache.lengths + active.astype(jnp.int32), step=step + 1, compact=cache.compact)
    return model.output(h), new_cache


  @_in_precision
  def extend(self, params, prefix: PrefixCache, tokens: jax.Array, lengths: jax.Array,
             positions: jax.Array | None = None, prefix_rows: jax.Array | None = None) -> jax.Array:
    """Runs N suffixes of every prompt at once on top of its shared prompt KV (no cache
    kept): the outputs of a full forward over prompt + suffix, at the suffix positions,
    with the prompt computed once per prompt instead of once per suffix (e.g. a verifier
    scoring N samples of a problem).

    Args:
      params: the model's params pytree.
      prefix: the prompts' PrefixCache (`prefill`), B prompts.
      tokens: int32[B, N, L] right-padded suffixes; lengths: int32[B, N] their lengths.
      positions: optional int32[B, N, Q]: the outputs only at these suffix positions (each
        in [0, L)); the last layer then runs its queries and MLP there only.
      prefix_rows: optional int32[B]: row b extends prompt prefix_rows[b] of `prefix` (which
        then holds any number of prompts), e.g. completions of several prompts packed into
        one batch; each layer gathers its rows' prompt KV when it attends.

    Returns:
      float32[B, N, L, ...] outputs (logits, or values for a value model) at each suffix
      position (meaningless past lengths), or float32[B, N, Q, ...] at `positions`.
    """
    chex.assert_rank(tokens, 3)
    b, n, length = tokens.shape
    prompt_kv = (lambda x: x) if prefix_rows is None else (lambda x: jnp.take(x, prefix_rows, axis=0))  # noqa: E731
    prefix_lengths = prompt_kv(prefix.lengths)
    positions_all = prefix_lengths[:, None, None] + jnp.arange(length)[None, None, :]
    cos, sin = rope_tables(self.config, positions_all)
    scale = self._scale()
    tp = prefix.k[0].shape[2]
    suffix_mask = causal_mask(lengths.reshape(-1), length)
    last = self.config.num_layers - 1
    if positions is not None:
      chex.assert_rank(positions, 3)
      j = jnp.arange(length)
      query_mask = ((j[None, None, None, :] <= positions[..., None])
                    & (j[None, None, None, :] < lengths[..., None, None])).reshape(b * n, positions.shape[-1], length)

    def attend(layer, q, k, v):
      # q: [B, N, Lq, Hkv, G, D] (Lq = L, or Q in the last layer with positions); k, v: [B, N, L, Hkv, D]
      hkv, g, d = q.shape[-3:]
      lq = q.shape[2]
      prefix_mask = jnp.broadcast_to((jnp.arange(tp)[None, :] < prefix_lengths[:, None])[:, None, :], (b, n * lq, tp))
      o_p, lse_p = attend_partial(q.reshape(b, n * lq, hkv, g, d), prompt_kv(prefix.k[layer]),
                                  prompt_kv(prefix.v[layer]), prefix_mask, scale)
      mask = query_mask if (positions is not None and layer == last) else suffix_mask
      suffix_attend = attend_partial if (positions is not None and layer == last) else attend_causal
      o_s, lse_s = suffix_attend(q.reshape(b * n, lq, hkv, g, d), heads_major(k.reshape(b * n, length, hkv, d)),
                                 heads_major(v.reshape(b * n, length, hkv, d)), mask, scale)
      o, _ = merge_partials(o_p.reshape(q.shape), lse_p.reshape(q.shape[:-1]), o_s.reshape(q.shape),
                            lse_s.reshape(q.shape[:-1]))
      return o

    model = self._module(params)
    return model.output(model.hidden(tokens, cos, sin, attend, query_at=positions))

  def _shared_prefix_attend(self, q, prefix, layer, sk, sv, mask):
    """q [B, N, 1, Hkv, G, D] over the shared prompt KV and each sample's suffix sk, sv
    [B, N, Hkv, Ts, D] (valid slots: mask bool[B, N, Ts]), merged by log-sum-exp."""
    b, n, _, hkv, g, d = q.shape
    scale = self._scale()
    path = attention_path(self.config.attention_impl, "decode")
    if path.pallas:
      o = cascade_decode(q[:, :, 0], prefix.k[layer], prefix.v[layer], prefix.lengths, sk, sv, mask,
                         scale=scale, interpret=path.interpret, platform=path.platform)[0]
      return o[:, :, None]
    tp = prefix.k[0].shape[2]
    prefix_mask = jnp.broadcast_to((jnp.arange(tp)[None, :] < prefix.lengths[:, None])[:, None, :], (b, n, tp))
    o_p, lse_p = attend_partial(q[:, :, 0], prefix.k[layer], prefix.v[layer], prefix_mask, scale)
    o_s, lse_s = attend_partial(q.reshape(b * n, 1, hkv, g, d), sk.reshape(b * n, hkv, -1, d),
                                sv.reshape(b * n, hkv, -1, d), mask.reshape(b * n, 1, -1), scale)
    o, _ = merge_partials(o_p, lse_p, o_s.reshape(b, n, hkv, g, d), lse_s.reshape(b, n, hkv, g))
    return o[:, :, None]

  def init_paged_cache(self, prefix: PrefixCache, num_samples: int, max_len: int, page_size: int = 16,
                       num_pages: int = 0) -> PagedKVCache:
    """A paged suffix cache (see `tts_jax.models.paged`): resampling moves block tables."""
    return init_paged_cache(prefix, self.config, num_samples, max_len, page_size, num_pages)

  def _decode_paged(self, params, tokens, cache: PagedKVCache, active, cos, sin):
    cache, page, offset = cache.prepare_write(active)
    lengths = cache.lengths + active.astype(jnp.int32)
    mask = cache.mask(lengths)
    new_k, new_v = [], []

    def attend(layer, q, k, v):
      kp, vp = cache.write_layer(layer, page, offset, k[:, :, 0], v[:, :, 0])
      new_k.append(kp)
      new_v.append(vp)
      sk, sv = cache.view(kp, vp)
      return self._shared_prefix_attend(q, cache.prefix, layer, sk, sv, mask)

    model = self._module(params)
    h = model.hidden(tokens[..., None], cos, sin, attend)[:, :, 0]
    return model.output(h), cache.replace(k=tuple(new_k), v=tuple(new_v), lengths=lengths)


def init(config: ModelConfig, seed: int = 0) -> tuple[LanguageModel, dict]:
  """A randomly initialised model (normal(0.02) weights, unit norms).

  Returns:
    (LanguageModel, params): params is a plain nested dict of arrays, e.g.
    params["layers"][0]["self_attn"]["q_proj"]["kernel"]: [H, heads * D].
  """
  graphdef, params = nnx.split(Decoder(config, nnx.Rngs(params=seed)))
  return LanguageModel(config=config, graphdef=graphdef), nnx.to_pure_dict(params)


def abstract(config: ModelConfig) -> tuple[LanguageModel, dict]:
  """Like `init` but allocates nothing: params are ShapeDtypeStructs (for loading)."""
  graphdef, params = nnx.split(nnx.eval_shape(lambda: Decoder(config, nnx.Rngs(params=0))))
  return LanguageModel(config=config, graphdef=graphdef), nnx.to_pure_dict(params)


@functools.partial(jax.jit, static_argnums=0)
def _forward_jit(lm: LanguageModel, params, tokens, lengths):
  return lm.forward(params, tokens, lengths)


def forward(lm: LanguageModel, params, tokens, lengths=None) -> jax.Array:
  """Jitted full-sequence logits: tokens int32[B, T] -> float32[B, T, V] (no cache).

  `lengths` int32[B] marks right padding; positions past it are meaningless.
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be int32[B, T], got shape {tokens.shape}")
  if tokens.shape[1] > lm.config.max_position_embeddings:
    raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds the model's context "
                     f"(max_position_embeddings={lm.config.max_position_embeddings})")
  lengths = jnp.full((tokens.shape[0],), tokens.shape[1], jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
  return _forward_jit(lm, params, tokens, lengths)
