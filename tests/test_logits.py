"""process_logits equals transformers' temperature / top-k / top-p / min-p warpers."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper,
                                                    TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from tts_jax.sampling import SamplingParams, process_logits


def hf_logprobs(logits: np.ndarray, temperature, top_k, top_p, min_p) -> np.ndarray:
  """The warper chain of transformers' `_get_logits_processor`, in its order."""
  chain = LogitsProcessorList()
  if temperature != 1.0:
    chain.append(TemperatureLogitsWarper(temperature))
  if top_k:
    chain.append(TopKLogitsWarper(top_k))
  if top_p < 1.0:
    chain.append(TopPLogitsWarper(top_p))
  if min_p > 0:
    chain.append(MinPLogitsWarper(min_p))
  scores = chain(None, torch.tensor(logits, dtype=torch.float32))
  return torch.log_softmax(scores, dim=-1).numpy()


def random_logits(kind: str, rng, b=16, v=64):
  if kind == "normal":
    return (rng.randn(b, v) * 3).astype(np.float32)
  if kind == "ties":  # few distinct values: many exact ties
    return rng.randint(-3, 4, size=(b, v)).astype(np.float32)
  if kind == "extreme":  # huge spread, -inf entries, a dominant token
    x = (rng.randn(b, v) * 1e3).astype(np.float32)
    x[rng.rand(b, v) < 0.2] = -np.inf
    x[:, 0] = np.where(np.isinf(x[:, 0]), 5.0, x[:, 0])
    x[0, 3] = 3e4
    return x
  raise ValueError(kind)


SETTINGS = [
    dict(temperature=t, top_k=k, top_p=p, min_p=m)
    for t, k, p, m in itertools.product((1.0, 0.7, 1.5), (0, 1, 5, 64, 100), (1.0, 0.9, 0.3),
                                        (0.0, 0.05, 0.5))
]


@pytest.mark.parametrize("kind", ["normal", "extreme"])
def test_matches_transformers(kind):
  rng = np.random.RandomState(0)
  logits = random_logits(kind, rng)
  for s in SETTINGS:
    ours = np.asarray(process_logits(jnp.asarray(logits), **s))
    ref = hf_logprobs(logits, **s)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref), err_msg=str(s))
    finite = np.isfinite(ref)
    # float32 resolution: relative error ~1e-7 per op on values up to |3e4|.
    np.testing.assert_allclose(ours[finite], ref[finite], atol=2e-5, rtol=1e-5, err_msg=str(s))


def test_ties():
  """top-k and min-p are value thresholds: identical to transformers with ties. For top-p,
  tokens tied at the cut-off are all kept (transformers keeps a sort-order-dependent subset):
  our kept set contains transformers' and differs only by tokens tied with its smallest kept."""
  rng = np.random.RandomState(1)
  logits = random_logits("ties", rng, b=64)
  for s in SETTINGS:
    ours = np.asarray(process_logits(jnp.asarray(logits), **s))
    ref = hf_logprobs(logits, **s)
    keep_o, keep_r = np.isfinite(ours), np.isfinite(ref)
    if s["top_p"] == 1.0:
      np.testing.assert_array_equal(keep_o, keep_r, err_msg=str(s))
      np.testing.assert_allclose(ours[keep_r], ref[keep_r], atol=2e-5)
      continue
    assert np.all(keep_o >= keep_r), s
    for row in range(logits.shape[0]):
      extra = keep_o[row] & ~keep_r[row]
      if extra.any():
        cut = logits[row][keep_r[row]].min()
        assert np.all(logits[row][extra] == cut), (s, row)


def test_greedy_is_first_argmax():
  logits = jnp.array([[1.0, 3.0, 3.0, 0.0], [-np.inf, 0.0, -1.0, 0.0]])
  out = process_logits(logits, temperature=0.0)
  np.testing.assert_array_equal(np.asarray(out), [[-np.inf, 0, -np.inf, -np.inf], [-np.inf, 0, -np.inf, -np.inf]])


def test_jittable_and_batched_shapes():
  x = jax.random.normal(jax.random.key(0), (2, 3, 50))
  f = jax.jit(lambda x: process_logits(x, temperature=0.8, top_k=7, top_p=0.9, min_p=0.1))
  out = f(x)
  assert out.shape == (2, 3, 50)
  np.testing.assert_allclose(np.asarray(jax.nn.logsumexp(out, axis=-1)), 0.0, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(top_p=0.0), "top_p must be in \\(0, 1\\]"),
    (dict(top_p=1.5), "top_p must be in \\(0, 1\\]"),
    (dict(top_p=-0.1), "top_p"),
    (dict(temperature=-1.0), "temperature must be"),
    (dict(top_k=-2), "top_k must be"),
    (dict(top_k=2.5), "top_k must be"),
    (dict(min_p=1.2), "min_p must be in \\[0, 1\\]"),
])
def test_bad_parameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    process_logits(jnp.zeros((1, 4)), **kwargs)
  with pytest.raises(ValueError, match=match):
    SamplingParams(**kwargs)
