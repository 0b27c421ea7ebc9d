"""Device meshes: results do not depend on the number of devices; mesh options and
parameter sharding rules. Several devices are simulated on CPU in subprocesses
(XLA_FLAGS=--xla_force_host_platform_device_count=N must be set before JAX starts)."""

import os
import subprocess
import sys

import jax
import pytest
from jax.sharding import PartitionSpec

from tts_jax.models import init
from tts_jax.models.config import ModelConfig
from tts_jax.parallel import MODEL, make_mesh, param_specs, parse_mesh, place_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(n: int) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-m", "tests.parallel_worker", str(n)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.split()}
  return lines


def test_completions_are_bit_identical_on_1_2_4_8_devices():
  """7 prompts in batches of 3 (neither the batch nor the device count divides the other):
  every device runs whole batches, so tokens, lengths, log-probs and entropies are the same
  bytes for every device count; nothing dropped or duplicated (shape [7, ...])."""
  results = {n: _worker(n) for n in (1, 2, 4, 8)}
  digests = {n: r["DIGEST"] for n, r in results.items()}
  assert "(7, 4, 16)" in digests[1]
  assert len(set(digests.values())) == 1, digests
  # Tensor parallel (data=2 x model=2): the same samples, log-probs equal up to rounding.
  _, same, diff = results[4]["TP"].split()
  assert float(same) == 1.0 and float(diff) < 1e-5, results[4]["TP"]


def test_mesh_options_name_their_errors():
  assert parse_mesh("data=4,model=2") == {"data": 4, "model": 2}
  assert parse_mesh("auto") == {} and parse_mesh(" model = 2 ") == {"model": 2}
  with pytest.raises(ValueError, match="unknown mesh axis 'tensor'"):
    parse_mesh("data=2,tensor=2")
  with pytest.raises(ValueError, match="axis=size"):
    parse_mesh("data:2")
  with pytest.raises(ValueError, match="given twice"):
    parse_mesh("data=1,data=1")
  with pytest.raises(ValueError, match="devices, but 1 are visible"):
    make_mesh(data=2)
  with pytest.raises(ValueError, match="model=3 does not divide"):
    make_mesh(model=3)
  mesh = make_mesh()
  assert dict(mesh.shape) == {"data": jax.device_count(), "model": 1}


def test_tensor_parallel_rules_split_heads_and_mlp():
  cfg = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                    head_dim=8, max_position_embeddings=64, attention_bias=True)
  _, params = init(cfg, 0)
  specs, notes = param_specs(params, 2)
  layer = specs["layers"][0]
  assert layer["self_attn"]["q_proj"]["kernel"] == PartitionSpec(None, MODEL)
  assert layer["self_attn"]["k_proj"]["bias"] == PartitionSpec(MODEL)
  assert layer["self_attn"]["o_proj"]["kernel"] == PartitionSpec(MODEL)
  assert layer["mlp"]["down_proj"]["kernel"] == PartitionSpec(MODEL)
  assert layer["input_layernorm"]["weight"] == PartitionSpec()
  assert specs["embed_tokens"] == PartitionSpec() and not notes
  _, notes = param_specs(params, 3)  # 3 divides nothing here: everything replicated, and said so
  assert notes and all("replicated" in n for n in notes)
  placed = place_params(make_mesh(), params)  # one device: a valid placement of every leaf
  assert jax.tree.structure(placed) == jax.tree.structure(params)
