"""Training: the loss decreases; a killed run resumes to exactly the uninterrupted result."""

import dataclasses

import jax
import numpy as np
import pytest

from tts_jax.config_files import ConfigError, apply_overrides, load_config
from tts_jax.verifiers import roc_auc
from tts_jax.models import ModelConfig
from tts_jax.tasks import ModChain
from tts_jax.train import OptimConfig, PolicyTrainConfig, make_batch, train_policy

TINY = ModelConfig(vocab_size=62, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                   num_kv_heads=1, head_dim=16, attention_bias=True, max_position_embeddings=128)


def tiny_config(out_dir, steps=24):
  return PolicyTrainConfig(task=ModChain(max_ops=3), model=TINY, optim=OptimConfig(learning_rate=1e-2, warmup_steps=4),
                           steps=steps, batch_size=8, max_len=96, seed=0, eval_every=0, checkpoint_every=5,
                           out_dir=str(out_dir))


def test_batches_are_pure_and_masked():
  task = ModChain()
  a, b = make_batch(task, 3, 4, 128, 0), make_batch(task, 3, 4, 128, 0)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(make_batch(task, 4, 4, 128, 0)["tokens"], a["tokens"])
  # The loss covers exactly the solution tokens and EOS.
  tok = task.tokenizer()
  for i in range(4):
    n = a["lengths"][i]
    targets = a["tokens"][i, 1:n][a["loss_mask"][i, :n - 1] > 0]
    assert targets[-1] == tok.token_to_id("<eos>")
    assert tok.decode(targets, skip_special_tokens=True) == task.solution(task.train_problem(0, 12 + i))
  with pytest.raises(ValueError, match="exceeds max_len=16"):
    make_batch(task, 0, 4, 16, 0)


def test_loss_decreases(tmp_path):
  _, _, log = train_policy(dataclasses.replace(tiny_config(tmp_path, steps=100)))
  assert log[-1]["loss"] < 0.7 * log[0]["loss"], log


def test_resume_after_kill_is_exact(tmp_path):
  full_cfg = tiny_config(tmp_path / "full")
  _, p_full, _ = train_policy(full_cfg)
  cut_cfg = tiny_config(tmp_path / "cut")
  train_policy(cut_cfg, stop_after=13)   # "killed" after step 13; last checkpoint at step 10
  _, p_resumed, _ = train_policy(cut_cfg)
  for a, b in zip(jax.tree.leaves(p_full), jax.tree.leaves(p_resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_vocab_mismatch_is_named(tmp_path):
  cfg = dataclasses.replace(tiny_config(tmp_path), model=TINY.replace(vocab_size=61))
  with pytest.raises(ValueError, match="vocab_size=61 but the modchain tokenizer has 62"):
    train_policy(cfg)


def test_experiment_files_and_overrides(tmp_path):
  cfg = load_config("experiments/train/modchain_policy.py")
  cfg2 = apply_overrides(cfg, ["steps=7", "optim.learning_rate=1e-4", "task.max_ops=5", "out_dir=/x"])
  assert (cfg2.steps, cfg2.optim.learning_rate, cfg2.task.max_ops, cfg2.out_dir) == (7, 1e-4, 5, "/x")
  with pytest.raises(ConfigError, match="unknown config key 'optim.lr'.*learning_rate"):
    apply_overrides(cfg, ["optim.lr=3"])
  with pytest.raises(ConfigError, match="steps=many: expected int"):
    apply_overrides(cfg, ["steps=many"])
  with pytest.raises(ConfigError, match="must look like key=value"):
    apply_overrides(cfg, ["steps"])
  with pytest.raises(FileNotFoundError, match="experiment file not found: nope.py"):
    load_config("nope.py")
  bad = tmp_path / "bad.py"
  bad.write_text("x = 1\n")
  with pytest.raises(ConfigError, match="defines no `config`"):
    load_config(str(bad))


def test_roc_auc_against_pairwise_definition():
  rng = np.random.default_rng(0)
  s = rng.integers(0, 5, size=200).astype(float)  # many ties
  y = rng.random(200) < 0.4
  pos, neg = s[y], s[~y]
  pairwise = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
  assert abs(roc_auc(s, y) - pairwise) < 1e-12
  assert roc_auc([1, 2, 3], [False, False, True]) == 1.0


def test_resuming_under_another_config_is_refused_and_the_log_has_no_duplicates(tmp_path):
  """Checkpoints store their config: a changed schedule or model is named, not silently
  continued; metrics.jsonl holds each step once after a resume."""
  import json
  cfg = dataclasses.replace(tiny_config(tmp_path, steps=12), checkpoint_every=5)
  train_policy(cfg, stop_after=7)  # checkpoint at 5; the log already has step 1 (and nothing past 7)
  with open(tmp_path / "metrics.jsonl", "a") as fh:
    fh.write(json.dumps({"step": 6, "loss": 9.0}) + "\n")  # a record past the checkpoint, as after a kill
  with pytest.raises(ValueError, match=r"another config \(differs in: optim\)"):
    train_policy(dataclasses.replace(cfg, optim=OptimConfig(learning_rate=5e-3, warmup_steps=4)))
  with pytest.raises(ValueError, match=r"differs in: steps"):
    train_policy(dataclasses.replace(cfg, steps=20))
  train_policy(cfg)
  steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps == sorted(set(steps)) and steps[-1] == 12, steps
