"""Every bad checkpoint gives an error that names the problem."""

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.helpers import save_hf_checkpoint
from tts_jax.models import hf
from tts_jax.models.hf import CheckpointError


@pytest.fixture(scope="module")
def good(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("good"))
  save_hf_checkpoint(path, "qwen2", seed=0)
  return path


@pytest.fixture
def ckpt(good, tmp_path):
  path = str(tmp_path / "ckpt")
  shutil.copytree(good, path)
  return path


def edit_config(path, **changes):
  f = os.path.join(path, "config.json")
  with open(f) as fh:
    cfg = json.load(fh)
  cfg.update(changes)
  with open(f, "w") as fh:
    json.dump(cfg, fh)


def edit_weights(path, fn):
  f = os.path.join(path, "model.safetensors")
  tensors = load_file(f)
  fn(tensors)
  save_file(tensors, f, metadata={"format": "pt"})


def test_good_checkpoint_loads(good):
  lm, params, tok = hf.load(good)
  assert lm.config.family == "qwen2" and tok.vocab_size == 300


def test_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="model directory not found"):
    hf.load(str(tmp_path / "nope"))


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json",
                                  "tokenizer_config.json"])
def test_missing_file(ckpt, name):
  os.remove(os.path.join(ckpt, name))
  with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
    hf.load(ckpt)


def test_unsupported_architecture(ckpt):
  edit_config(ckpt, architectures=["GPT2LMHeadModel"], model_type="gpt2")
  with pytest.raises(CheckpointError, match="GPT2LMHeadModel.*supported: LlamaForCausalLM, MistralForCausalLM, "
                     "Qwen2ForCausalLM, Qwen3ForCausalLM; reward models also: Qwen2ForProcessRewardModel"):
    hf.load(ckpt)


def test_unsupported_rope(ckpt):
  edit_config(ckpt, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
  with pytest.raises(CheckpointError, match="unsupported rope type 'yarn'"):
    hf.load(ckpt)


def test_shape_mismatch_names_tensor_and_shapes(ckpt):
  edit_config(ckpt, intermediate_size=96)
  with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.down_proj\.weight has shape "
                     r"\(48, 80\) in the checkpoint but the config implies \(48, 96\)"):
    hf.load(ckpt)


def test_missing_tensor(ckpt):
  edit_weights(ckpt, lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
  with pytest.raises(CheckpointError, match=r"missing tensors \(1\): model\.layers\.1\.self_attn\.k_proj\.bias"):
    hf.load(ckpt)


def test_unexpected_tensor(ckpt):
  edit_weights(ckpt, lambda t: t.update({"model.layers.0.mlp.extra.weight": np.zeros((2, 2), np.float32)}))
  with pytest.raises(CheckpointError, match=r"unexpected tensors \(1\): model\.layers\.0\.mlp\.extra\.weight"):
    hf.load(ckpt)


def test_fewer_layers_in_config_is_unexpected(ckpt):
  edit_config(ckpt, num_hidden_layers=1)
  with pytest.raises(CheckpointError, match="unexpected tensors.*model.layers.1"):
    hf.load(ckpt)


def test_missing_shard(tmp_path):
  save_hf_checkpoint(str(tmp_path), "llama", seed=1, max_shard_size="50KB")
  shard = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))[-1]
  os.remove(tmp_path / shard)
  with pytest.raises(FileNotFoundError, match=f"checkpoint shard missing: .*{shard}"):
    hf.load(str(tmp_path))
