"""N samples per prompt from shared prompts, in one jitted `lax.while_loop`.

    out = sample(lm, params, [prompt_ids_a, prompt_ids_b], key=jax.random.key(0),
                 num_samples=16, max_new_tokens=128, temperature=0.7, top_p=0.95,
                 stop_tokens=tokenizer.eos_token_ids)
    out.tokens[b, n, :out.lengths[b, n]]   # sample n of prompt b

Each prompt is prefilled once; its N samples share that KV (see
`tts_jax.models.lm`). Finished samples are absorbing: they write no KV, their
later tokens are `pad_id` and their later log-probs 0.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tts_jax.models import CausalLM, pad_prompts
from tts_jax.parallel import MODEL, per_device, place_params, shard_batch, unpad
from tts_jax.sampling.inputs import check_prompt_batch, check_token_ids, prompt_keys
from tts_jax.sampling.logits import SamplingParams
from tts_jax.sampling.token_step import draw_tokens

RUNNING, STOP, LENGTH, LOW_CONFIDENCE = 0, 1, 2, 3
FINISH_REASONS = {RUNNING: "running", STOP: "stop", LENGTH: "length", LOW_CONFIDENCE: "low confidence"}


@struct.dataclass
class SampleOutput:
  """What `sample` returns (B prompts, N samples each, T = max_new_tokens).

  tokens: int32[B, N, T], pad_id after a sample's end.
  lengths: int32[B, N] generated tokens, including the stop token when one was hit.
  finish_reason: int32[B, N], STOP (a stop token was generated) or LENGTH.
  logprobs: float32[B, N, T] log-prob of each token under the model (temperature 1,
    no filtering); 0 after the end.
  proposal_logprobs: float32[B, N, T] log-prob under the sampling distribution
    (`process_logits`); 0 after the end.
  entropy: float32[B, N, T] entropy (nats) of the model's next-token distribution; 0 after the end.
  group_confidence: float32[B, N] with confidence tracking (`ConfidenceWindow`): the lowest
    mean token confidence over any `window` consecutive tokens (DeepConf's "lowest group
    confidence"; +inf for a sample shorter than the window); None without.
  """

  tokens: jax.Array
  lengths: jax.Array
  finish_reason: jax.Array
  logprobs: jax.Array
  proposal_logprobs: jax.Array
  entropy: jax.Array
  group_confidence: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class ConfidenceWindow:
  """Token confidence as DeepConf (Fu et al. 2025) defines it, tracked while sampling: a
  token's confidence is minus the mean log-prob of the model's `top_k` most likely tokens at
  that step (high when the model is sure); a group's is its mean over `window` consecutive
  tokens. With thresholds (`sample_jit(..., confidence_threshold=float32[B])`) a sample
  stops, finish reason LOW_CONFIDENCE, as soon as a group falls below its prompt's threshold."""

  window: int = 16
  top_k: int = 20

  def __post_init__(self):
    for name in ("window", "top_k"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"ConfidenceWindow.{name} must be an int >= 1, got {v!r}")


@struct.dataclass
class _LoopState:
  t: jax.Array
  logits: jax.Array
  cache: object
  done: jax.Array
  reason: jax.Array
  out: SampleOutput
  conf: jax.Array | None = None  # float32[B, N, window] the last tokens' confidences (a ring)


CACHE_SEGMENT = 32  # the first suffix capacity; it doubles each time the cache fills


def cache_segments(lm, max_new_tokens: int) -> tuple[int, ...]:
  """The suffix capacities a decode loop runs through: 32, 64, 128, ... then max_new_tokens
  (one `lax.while_loop` each; the cache grows between them, `KVCache.grow`). A decode step
  reads every slot of its cache, so steps in a small cache are cheaper (CPU, 1,600 samples:
  36 ms per step at 32 slots, 58 ms at 96). Caches without `grow` (e.g. tabular) use one loop."""
  if not hasattr(getattr(lm, "init_cache", None), "__call__") or not _grows(lm):
    return (max_new_tokens,)
  out, c = [], CACHE_SEGMENT
  while c < max_new_tokens:
    out.append(c)
    c *= 2
  return tuple(out) + (max_new_tokens,)


def _grows(lm) -> bool:
  """Whether `lm`'s caches grow: a `LanguageModel`, or a wrapper of one (`.lm`, e.g. a
  `tts_jax.models.twist_head.BoundedTwist`) that hands out its caches."""
  from tts_jax.models.lm import LanguageModel  # noqa: PLC0415
  return isinstance(lm, LanguageModel) or isinstance(getattr(lm, "lm", None), LanguageModel)


def _entropy(logp: jax.Array) -> jax.Array:
  p = jnp.exp(logp)
  return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


@functools.partial(jax.jit, static_argnames=("lm", "num_samples", "max_new_tokens", "params_s",
                                             "stop_tokens", "pad_id", "share_prefix", "confidence"))
def sample_jit(lm: CausalLM, params, tokens, lengths, keys, *, num_samples: int,
               max_new_tokens: int, params_s: SamplingParams, stop_tokens: tuple[int, ...],
               pad_id: int, share_prefix: bool, limits=None, confidence: ConfidenceWindow | None = None,
               confidence_threshold=None) -> SampleOutput:
  """The traceable sampler (`sample` checks its inputs, then calls this). limits: optional
  int32[B], at most this many new tokens for prompt b's samples (<= max_new_tokens; LENGTH
  when reached): a per-row length cap, e.g. suffixes of different prefixes that must end at
  one total length (`tts_jax.mcmc`). confidence: track DeepConf group confidences
  (`ConfidenceWindow`); confidence_threshold: optional float32[B], stop a sample of prompt b
  when a group's confidence falls below it (early stopping, DeepConf online)."""
  b, n, t_max = tokens.shape[0], num_samples, max_new_tokens
  segments = cache_segments(lm, t_max)
  if share_prefix:
    first_logits, prefix = lm.prefill(params, tokens, lengths)
    cache = lm.init_cache(prefix, n, segments[0])
  else:  # the baseline: N copies of every prompt, each with one sample
    first_logits, prefix = lm.prefill(params, jnp.repeat(tokens, n, axis=0), jnp.repeat(lengths, n))
    first_logits = first_logits[::n]
    cache = lm.init_cache(prefix, 1, segments[0])
  layout = (lambda x: x) if share_prefix else (lambda x: x.reshape(b * n, 1, *x.shape[2:]))
  unlayout = (lambda x: x) if share_prefix else (lambda x: x.reshape(b, n, *x.shape[2:]))

  zeros_f = jnp.zeros((b, n, t_max), jnp.float32)
  out = SampleOutput(tokens=jnp.full((b, n, t_max), pad_id, jnp.int32),
                     lengths=jnp.zeros((b, n), jnp.int32),
                     finish_reason=jnp.zeros((b, n), jnp.int32),
                     logprobs=zeros_f, proposal_logprobs=zeros_f, entropy=zeros_f)
  if confidence is not None:
    out = out.replace(group_confidence=jnp.full((b, n), jnp.inf, jnp.float32))
  init = _LoopState(t=jnp.zeros((), jnp.int32),
                    logits=jnp.broadcast_to(first_logits[:, None], (b, n, first_logits.shape[-1])),
                    cache=cache, done=jnp.zeros((b, n), bool), reason=jnp.zeros((b, n), jnp.int32),
                    out=out, conf=None if confidence is None else jnp.zeros((b, n, confidence.window), jnp.float32))

  def cond(end):
    return lambda s: (s.t < end) & ~jnp.all(s.done)

  def body(s: _LoopState):
    active = ~s.done
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, s.t))(keys)  # a prompt's draws depend on its key only
    d = draw_tokens(s.logits, step_keys, active, proposal=params_s, stop_tokens=stop_tokens, pad_id=pad_id)

    def put(buf, x):
      return jax.lax.dynamic_update_slice_in_dim(buf, x[..., None].astype(buf.dtype), s.t, axis=2)

    o = s.out
    o = SampleOutput(tokens=put(o.tokens, d.tokens), lengths=o.lengths + active.astype(jnp.int32),
                     finish_reason=o.finish_reason, logprobs=put(o.logprobs, d.logp),
                     proposal_logprobs=put(o.proposal_logprobs, d.logq),
                     entropy=put(o.entropy, jnp.where(active, _entropy(d.model_logprobs), 0.0)),
                     group_confidence=o.group_confidence)
    done = s.done | d.stopped
    if limits is not None:
      done = done | (o.lengths >= limits[:, None])  # reason stays RUNNING: LENGTH at the end
    reason = jnp.where(d.stopped, STOP, s.reason)
    conf = s.conf
    if confidence is not None:
      top = jax.lax.top_k(d.model_logprobs, min(confidence.top_k, d.model_logprobs.shape[-1]))[0]
      token_conf = -jnp.mean(jnp.where(jnp.isfinite(top), top, 0.0), axis=-1)  # [B, N]
      conf = jnp.where(active[..., None] & (jnp.arange(confidence.window) == s.t % confidence.window),
                       token_conf[..., None], s.conf)
      full = active & (o.lengths >= confidence.window)  # a whole window of this sample's tokens
      group = jnp.where(full, jnp.mean(conf, axis=-1), jnp.inf)
      o = o.replace(group_confidence=jnp.minimum(o.group_confidence, group))
      if confidence_threshold is not None:
        low = full & ~d.stopped & (group < confidence_threshold[:, None])
        done = done | low
        reason = jnp.where(low, LOW_CONFIDENCE, reason)
    logits, cache = lm.decode(params, layout(d.tokens), s.cache, active=layout(~done))
    logits = unlayout(logits)
    return _LoopState(t=s.t + 1, logits=logits, cache=cache, done=done, reason=reason, out=o, conf=conf)

  final = init
  for i, end in enumerate(segments):  # the cache grows when full: early steps read fewer slots
    if i:
      final = final.replace(cache=final.cache.grow(end))
    final = jax.lax.while_loop(cond(end), body, final)
  reason = jnp.where(final.reason == RUNNING, LENGTH, final.reason)
  return final.out.replace(finish_reason=reason)


def sample(lm: CausalLM, params, prompts, *, key: jax.Array, num_samples: int = 1,
           max_new_tokens: int = 128, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           min_p: float = 0.0, stop_tokens: Sequence[int] = (), pad_id: int = 0,
           prompt_lengths=None, share_prefix: bool = True, mesh=None, confidence: ConfidenceWindow | None = None,
           confidence_threshold=None) -> SampleOutput:
  """Draws `num_samples` continuations of each prompt.

  Args:
    lm: a model with the LanguageModel contract (`LanguageModel`, `TabularLM`, ...).
    params: its params pytree.
    prompts: a list of B token-id lists (ragged), or int32[B, Tp] right-padded with
      `prompt_lengths` int32[B].
    key: a JAX PRNG key, or one key per prompt (shape [B]); prompt b uses its own key
      (by default fold_in(key, b)), so its samples do not depend on the other prompts of
      the batch, the batch size or the padding.
    num_samples: N samples per prompt.
    max_new_tokens: T, the most tokens generated per sample.
    temperature, top_k, top_p, min_p: see `process_logits`.
    stop_tokens: ids that end a sample (kept as its last token).
    pad_id: fills tokens after a sample's end.
    share_prefix: True (default) prefills each prompt once and shares its KV among
      its samples; False prefills B*N copies (a baseline; same samples for the same key).
    mesh: a `tts_jax.parallel` mesh: prompts split over its "data" axis (padded to a
      multiple of it with copies of the first). With model=1 every device runs its own
      loop on its prompts (`per_device`): bit for bit what a single-device call on those
      prompts returns. With model > 1 the params are split over "model" (tensor parallel,
      `tts_jax.parallel.rules`): the same samples up to float rounding. Params not yet
      placed on the mesh are copied there on every call: place them once with
      `tts_jax.parallel.place_params(mesh, params)` (the runner does).
    confidence: a `ConfidenceWindow`: track DeepConf's lowest group confidence of every
      sample (`SampleOutput.group_confidence`). confidence_threshold: float32[B] (with
      `confidence`): stop a sample as soon as a group's confidence falls below its prompt's
      threshold (finish reason LOW_CONFIDENCE; its tokens so far are kept).

  Returns:
    SampleOutput with leading dims [B, N].
  """
  params_s = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
  if not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
  if prompt_lengths is None:
    if isinstance(prompts, (np.ndarray, jax.Array)):
      raise ValueError("an array of prompts needs prompt_lengths; or pass a list of token lists")
    tokens, lengths = pad_prompts(prompts, pad_id=pad_id)
  else:
    tokens, lengths = prompts, prompt_lengths
  tokens, lengths = check_prompt_batch(lm, tokens, lengths, max_new_tokens)
  stop_tokens = tuple(sorted({int(s) for s in stop_tokens}))
  check_token_ids(lm, stop_tokens=stop_tokens, pad_id=(pad_id,))
  kwargs = dict(max_new_tokens=max_new_tokens, params_s=params_s, stop_tokens=stop_tokens, pad_id=pad_id)
  b = tokens.shape[0]
  keys = prompt_keys(key, b)
  tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
  kwargs.update(num_samples=num_samples, share_prefix=share_prefix)
  if confidence_threshold is not None:
    if confidence is None:
      raise ValueError("confidence_threshold needs confidence=ConfidenceWindow(...)")
    confidence_threshold = jnp.broadcast_to(jnp.asarray(confidence_threshold, jnp.float32), (b,))
  if confidence is not None:
    if mesh is not None:
      raise ValueError("confidence tracking runs on one device (mesh=None)")
    return _check_logprobs(sample_jit(lm, params, tokens, lengths, keys, confidence=confidence,
                                      confidence_threshold=confidence_threshold, **kwargs))
  if mesh is None:
    return _check_logprobs(sample_jit(lm, params, tokens, lengths, keys, **kwargs))
  tokens, lengths, keys = shard_batch(mesh, tokens, lengths, keys)
  params = place_params(mesh, params)
  if mesh.shape[MODEL] == 1:
    return _check_logprobs(unpad(_sample_sharded(lm, mesh, params, tokens, lengths, keys, **kwargs), b))
  # Tensor parallel: XLA's SPMD partitioner splits the layers over "model" by the params'
  # shardings (the same samples up to float rounding of the split reductions).
  return _check_logprobs(unpad(sample_jit(lm, params, tokens, lengths, keys, **kwargs), b))


def _check_logprobs(out: SampleOutput) -> SampleOutput:
  """Raises if a sampled token's log-probability is NaN: the model gave NaN (or all -inf)
  logits, so the 'samples' are not draws from anything."""
  if isinstance(out.logprobs, jax.core.Tracer):
    return out  # under a caller's trace: nothing concrete to check
  if bool(jnp.any(jnp.isnan(out.logprobs))):
    raise FloatingPointError("the model produced NaN or all -inf logits while sampling (check the params: NaN "
                             "weights, a checkpoint of another dtype); no sample was drawn from it")
  return out


@functools.partial(jax.jit, static_argnames=("lm", "mesh", "num_samples", "max_new_tokens", "params_s",
                                             "stop_tokens", "pad_id", "share_prefix"))
def _sample_sharded(lm, mesh, params, tokens, lengths, keys, **static) -> SampleOutput:
  """`sample_jit` on every device's prompts (split over "data"), each device running its
  own loop: per device, exactly the program of a single-device call on those prompts."""
  return per_device(mesh, lambda t, l, k: sample_jit(lm, params, t, l, k, **static), tokens, lengths, keys)
