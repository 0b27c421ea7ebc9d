"""Device meshes: results do not depend on the number of devices; mesh options and
parameter sharding rules. Several devices are simulated on CPU in subprocesses
(XLA_FLAGS=--xla_force_host_platform_device_count=N must be set before JAX starts)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest
from jax.sharding import PartitionSpec

from tts_jax.models import init
from tts_jax.models.config import ModelConfig
from tts_jax.parallel import MODEL, make_mesh, param_specs, parse_mesh, place_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(cache) -> dict:
  """The subprocess environment: no XLA_FLAGS of ours, and a compilation cache shared by the
  test's subprocesses (the programs that do not depend on the device count compile once)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["TTS_JAX_COMPILATION_CACHE"] = str(cache)
  return env


def _worker(*args, cache, check=True) -> dict:
  env = _env(cache)
  out = subprocess.run([sys.executable, "-m", "tests.parallel_worker", *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0 or not check, out.stderr[-3000:]
  return {line.split()[0]: line for line in out.stdout.splitlines() if line.split()}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_completions_and_smc_are_bit_identical_on_1_and_8_devices(tmp_path):
  """One process per device count (1 and 8) runs both checks:

  Sampling: 7 prompts in batches of 3 (neither the batch nor the device count divides the
  other): every device runs whole batches, so tokens, lengths, log-probs and entropies are the
  same bytes for every device count; nothing dropped or duplicated (shape [7, ...]). A value
  model's scores of those completions (two repeated) on 8 devices are the bytes of one-device
  calls, one prompt each (each device packs its own prompt's completions). The same
  with the Pallas attention kernels (interpret mode) running under shard_map. Tensor parallel
  (data=4 x model=2): the same samples, log-probs and a value model's completion scores equal
  up to rounding.

  run_smc under Resample, Beam and DVTS on 5 prompts, DVTS as a member of a `OneOf`
  (which must equal DVTS alone), and beam search with a checker only the host can run (the
  loop driven from the host, per device on 8, never calling back): tokens, lengths, weights,
  log Z, ancestors and resample counts are the same bytes for every device count; so are
  QAlign's chains with an array reward and with that host checker. Tensor parallel gives the
  same particles
  up to float rounding."""
  results = {n: _worker("sample+smc", n, cache=tmp_path) for n in (1, 8)}
  digests = {n: r["sample:DIGEST"] for n, r in results.items()}
  assert "(7, 4, 16)" in digests[1]
  assert len(set(digests.values())) == 1, digests
  scores = {n: r["sample:SCORES"] for n, r in results.items()}  # per-device pool scoring
  assert "(7, 6)" in scores[1] and len(set(scores.values())) == 1, scores
  pallas = {n: r["sample:PALLAS"] for n, r in results.items()}  # the Pallas kernels under shard_map
  assert "(3, 2, 6)" in pallas[1] and len(set(pallas.values())) == 1, pallas
  _, same, diff = results[8]["sample:TP"].split()
  assert float(same) == 1.0 and float(diff) < 1e-5, results[8]["sample:TP"]
  smc = {n: r["smc:DIGEST"] for n, r in results.items()}
  assert len(set(smc.values())) == 1, smc
  for line in ("smc:TP", "smc:TPHOST"):  # particle filtering, and beam search with a host checker
    _, same, diff = results[8][line].split()  # the policy split over "model"
    assert float(same) == 1.0 and float(diff) < 1e-5, results[8][line]


def test_experiment_results_are_byte_identical_on_1_device_and_2_processes(tmp_path):
  """`run_experiment` with a pool method (majority vote) and a search method (particle
  filtering with the PRM) on 9 problems in 5 batches: results.jsonl is byte-identical for 1 device
  and for 2 processes of 2 devices joined by jax.distributed (groups of 4 batches, the last
  padded with copies; nothing dropped or duplicated), where process 0 alone writes. Process 1
  is killed with SIGKILL after the first batch is written (process 0 then dies or is killed
  too), both are started again, and the run resumes to the same bytes. Then a different config
  started into the same directory is refused by both processes. (Several devices in
  one process are the same grouping; the sampling and SMC test above covers 8.)"""
  reference = _worker("run", 1, tmp_path / "d1", cache=tmp_path / "cache")["DIGEST"]
  out = tmp_path / "two"
  results = out / "results.jsonl"

  def start(port, *extra):
    env = _env(tmp_path / "cache")
    return [subprocess.Popen([sys.executable, "-m", "tests.parallel_worker", "run", "2", str(out), "--process",
                              str(i), "--processes", "2", "--port", str(port), *extra], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]

  procs = start(_free_port())
  deadline = time.time() + 900
  while (time.time() < deadline and all(p.poll() is None for p in procs)
         and (not results.exists() or results.read_bytes().count(b"\n") < 4)):
    time.sleep(0.05)
  assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
  procs[1].send_signal(signal.SIGKILL)
  try:
    procs[0].wait(timeout=5)
  except subprocess.TimeoutExpired:  # blocked in a collective with its dead peer
    procs[0].send_signal(signal.SIGKILL)
  for p in procs:
    p.communicate()
  written = results.read_bytes().count(b"\n")
  assert 4 <= written < 18, written  # at least one batch, not all
  procs = start(_free_port())
  outs = [p.communicate(timeout=900) for p in procs]
  assert all(p.returncode == 0 for p in procs), [o[1][-3000:] for o in outs]
  digest = next(line for line in outs[0][0].splitlines() if line.startswith("DIGEST"))
  assert digest == reference
  lines = results.read_text().splitlines()
  assert sorted((json.loads(x)["problem"], json.loads(x)["budget"]) for x in lines) == \
      [(i, k) for i in range(9) for k in (1, 2)]
  assert "DIGEST" not in outs[1][0]  # process 1 never wrote or summarised
  # Another config into the same directory: process 0 refuses it, and process 1 stops with it
  # instead of waiting for its peer in the run's first collective (where both hung before).
  procs = start(_free_port(), "--num-subsets", "3")
  try:
    errs = [p.communicate(timeout=300)[1] for p in procs]
  finally:  # a hang fails the test without leaving the processes behind
    for p in procs:
      p.kill()
  assert [p.returncode != 0 for p in procs] == [True, True], errs
  assert "holds results of a different experiment config" in errs[0], errs[0][-2000:]
  assert "process 0 refused the output directory" in errs[1], errs[1][-2000:]
  assert results.read_text().splitlines() == lines  # nothing written


def test_host_work_is_split_over_processes(tmp_path):
  """The host side of the loops driven from the host on a mesh (`host_each_device`): on 2
  processes of 2 devices each, a process computes only its own devices' rows, and every process
  reads the whole result, each device's rows in order."""
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-m", "tests.parallel_worker", "host", "2", "--process", str(i),
                             "--processes", "2", "--port", str(port)], cwd=ROOT, env=_env(tmp_path / "cache"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
  try:
    outs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
  want = [10 * v + v // 2 for v in range(8)]  # device d's row [2d, 2d + 1] -> 10 x + d
  for i, (out, _) in enumerate(outs):
    line = next(x for x in out.splitlines() if x.startswith("HOST"))
    assert line == f"HOST {i} {[2 * i, 2 * i + 1]} {want}", line


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
