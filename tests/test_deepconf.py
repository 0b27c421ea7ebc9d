"""DeepConf confidence tracking in the sampler against a host recomputation from full forward
passes: each sample's lowest group confidence, and with a threshold, the exact step at which a
sample stops (its tokens up to there identical to the untracked run)."""

import jax
import numpy as np
import pytest

from tts_jax.models import forward, init, qwen2_config
from tts_jax.sampling import LOW_CONFIDENCE, ConfidenceWindow, sample

W, TOPK, T = 4, 5, 20


@pytest.fixture(scope="module")
def model():
  cfg = qwen2_config(vocab_size=13, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, max_position_embeddings=64)
  return init(cfg, seed=5)


def _host_token_confidences(lm, params, prompt, toks):
  """-mean of the top-k log-probs at each generated position (full forward, float64 softmax)."""
  logits = np.asarray(forward(lm, params, np.asarray([list(prompt) + list(toks)], np.int32))[0], np.float64)
  logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  steps = logp[len(prompt) - 1:len(prompt) - 1 + len(toks)]
  return -np.sort(steps, axis=-1)[:, -TOPK:].mean(-1)


def _groups(c):
  """Means of every W consecutive confidences (none for a shorter sample)."""
  return np.convolve(c, np.ones(W) / W, mode="valid") if len(c) >= W else np.zeros(0)


def test_group_confidence_and_early_stop_match_the_host(model):
  lm, params = model
  prompts = [[1, 2, 3], [4, 5]]
  kw = dict(key=jax.random.key(0), num_samples=6, max_new_tokens=T, stop_tokens=(12,), pad_id=0)
  out = sample(lm, params, prompts, confidence=ConfidenceWindow(window=W, top_k=TOPK), **kw)
  plain = sample(lm, params, prompts, **kw)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(plain.tokens))  # tracking changes nothing
  mins = np.zeros((2, 6))
  for b, prompt in enumerate(prompts):
    for n in range(6):
      toks = np.asarray(out.tokens[b, n, :out.lengths[b, n]])
      c = _host_token_confidences(lm, params, prompt, toks)
      groups = _groups(c)
      mins[b, n] = groups.min() if len(groups) else np.inf
      np.testing.assert_allclose(float(out.group_confidence[b, n]), mins[b, n], rtol=1e-4, atol=1e-4)
  # A threshold between the samples' lowest confidences stops some of them exactly where the
  # host sees the first group below it.
  thr = np.median(mins, axis=1)
  stopped = sample(lm, params, prompts, confidence=ConfidenceWindow(window=W, top_k=TOPK),
                   confidence_threshold=thr, **kw)
  n_low = 0
  for b, prompt in enumerate(prompts):
    for n in range(6):
      toks = np.asarray(out.tokens[b, n, :out.lengths[b, n]])
      c = _host_token_confidences(lm, params, prompt, toks)
      groups = _groups(c)
      below = np.nonzero(groups < thr[b])[0]
      # the group ending at token j stops the sample after token j (unless token j ended it anyway)
      if len(below) and below[0] + W < len(toks):
        n_low += 1
        assert int(stopped.lengths[b, n]) == below[0] + W and int(stopped.finish_reason[b, n]) == LOW_CONFIDENCE
      else:
        assert int(stopped.lengths[b, n]) == len(toks) and int(stopped.finish_reason[b, n]) != LOW_CONFIDENCE
      k = int(stopped.lengths[b, n])
      np.testing.assert_array_equal(np.asarray(stopped.tokens[b, n, :k]), toks[:k])
  assert n_low >= 3  # the threshold did stop samples


def test_bad_confidence_arguments_are_named(model):
  lm, params = model
  with pytest.raises(ValueError, match="window must be an int >= 1"):
    ConfidenceWindow(window=0)
  with pytest.raises(ValueError, match="confidence_threshold needs confidence"):
    sample(lm, params, [[1, 2]], key=jax.random.key(0), max_new_tokens=4, confidence_threshold=1.0)


def test_deepconf_method_in_the_runner(tmp_path):
  """DeepConf as an experiment method on the shipped policy: the warm-up sets a threshold that
  stops some of the other samples (fewer tokens than N full samples), more of them with keep =
  10% than with 90%."""
  import json
  from tts_jax.eval import DeepConf, Experiment, MajorityVote, run_experiment
  from tts_jax.tasks import ModChain
  exp = Experiment(name="dc", task=ModChain(), split="hard", num_problems=4, models="default",
                   methods=(MajorityVote(), DeepConf(window=8, top_k=10, keep=0.1, name="dc-low"),
                            DeepConf(window=8, top_k=10, keep=0.9, name="dc-high")),
                   budgets=(4, 16), max_new_tokens=64, batch_problems=2, out_dir=str(tmp_path / "full"))
  run_experiment(exp, quiet=True)
  recs = [json.loads(x) for x in (tmp_path / "full" / "results.jsonl").read_text().splitlines()]
  at16 = [r["methods"] for r in recs if r["budget"] == 16]
  low = sum(m["dc-low"]["stopped"] for m in at16)
  high = sum(m["dc-high"]["stopped"] for m in at16)
  assert low > high and low >= 4 * 3  # keep 10%: a good share of the 12 non-warm-up samples stop
  assert sum(m["dc-low"]["generated_tokens"] for m in at16) < sum(m["majority vote"]["generated_tokens"] for m in at16)
  for m in at16:
    assert m["dc-low"]["generated_tokens"] <= m["majority vote"]["generated_tokens"]
    assert 0 <= m["dc-high"]["stopped"] <= 12 and m["dc-low"]["samples"] == 16
  with pytest.raises(ValueError, match="keep must be in"):
    Experiment(name="x", task=ModChain(), methods=(DeepConf(keep=0.0),), budgets=(4,))
