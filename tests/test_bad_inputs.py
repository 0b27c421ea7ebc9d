"""Bad input gets an error that names the problem (issue 17): the particle engine validates
what `sample` validates, non-finite weights follow one documented rule, tiny temperatures
and NaN models are refused, experiment values are checked before any work, and the CLI
prints one line (a traceback only with --debug)."""

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import HostScored
from tts_jax.models import init, qwen2_config
from tts_jax.models.value import init_value
from tts_jax.sampling import SamplingParams, sample
from tts_jax.search import beam_search, best_of_n, dvts
from tts_jax.smc import SMCConfig, particle_filter, run_smc
from tts_jax.smc.resampling import ess
from tts_jax.verifiers import ValuePotential

CFG = qwen2_config(vocab_size=40, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                   head_dim=8, max_position_embeddings=48)


@pytest.fixture(scope="module")
def lm():
  return init(CFG, 0)


def zero(tokens, lengths, done):
  del tokens, done
  return jnp.zeros(lengths.shape, jnp.float32)


def smc(lm, tokens=None, lengths=None, key=None, cfg=None, potential=zero, **kw):
  model, params = lm
  tokens = np.array([[1, 2, 3], [4, 5, 0]], np.int32) if tokens is None else tokens
  lengths = np.array([3, 2], np.int32) if lengths is None else lengths
  cfg = cfg or particle_filter(4, max_new_tokens=6, delimiters=(7,))
  return run_smc(model, params, tokens, lengths, jax.random.key(0) if key is None else key, cfg=cfg,
                 potential=potential, **kw)


@pytest.mark.parametrize("tokens, lengths, match", [
    (np.array([[1, 62, 3]]), np.array([3]), "prompt 0 has token id 62 at position 1, outside the vocabulary"),
    (np.array([[1, -7, 3]]), np.array([3]), "token id -7"),
    (np.array([[1, 2, 3]]), np.array([0]), r"prompt_lengths must be in \[1, 3\], got \[0\]"),
    (np.array([[1, 2, 3]]), np.array([4]), r"prompt_lengths must be in \[1, 3\], got \[4\]"),
    (np.array([1, 2, 3]), np.array([3]), r"prompts must be int32\[B, Tp\]"),
    (np.array([[1, 2, 3]]), np.array([3, 3]), r"prompts must be int32\[B, Tp\]"),
    (np.array([[1.0, 2.0]]), np.array([2]), "must be integers"),
    (np.ones((1, 45), np.int32), np.array([45]), "prompt of 45 tokens \\+ max_new_tokens=6 exceeds the model's context of 48"),
])
def test_run_smc_checks_prompts_like_sample(lm, tokens, lengths, match):
  with pytest.raises(ValueError, match=match):
    smc(lm, tokens, lengths)
  if tokens.ndim == 2 and lengths.shape == tokens.shape[:1] and tokens.dtype.kind == "i":
    with pytest.raises(ValueError, match=match.replace("max_new_tokens=6", "max_new_tokens=\\d+")):
      sample(lm[0], lm[1], tokens, prompt_lengths=lengths, key=jax.random.key(0), max_new_tokens=6)


def test_run_smc_checks_keys_tokens_and_potentials(lm):
  with pytest.raises(ValueError, match="typed PRNG key .* not raw uint32"):
    smc(lm, key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"one PRNG key or one per prompt \(2\), got shape \(3,\)"):
    smc(lm, key=jax.random.split(jax.random.key(0), 3))
  with pytest.raises(ValueError, match="delimiters holds token id 99, outside the vocabulary"):
    smc(lm, cfg=particle_filter(4, max_new_tokens=6, delimiters=(99,)))
  with pytest.raises(ValueError, match="stop_tokens holds token id -1"):
    smc(lm, cfg=particle_filter(4, max_new_tokens=6, stop_tokens=(-1,)))
  with pytest.raises(ValueError, match=r"the potential returned shape \(2,\); it must return log phi float32\[2, 4\]"):
    smc(lm, potential=lambda t, l, d: jnp.zeros(l.shape[:1]))
  small = qwen2_config(vocab_size=30, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                       num_kv_heads=1, head_dim=8, max_position_embeddings=48)
  vm, vparams = init_value(small, 1)
  with pytest.raises(ValueError, match="vocabulary of 30 tokens but the policy's has 40"):
    smc(lm, potential=ValuePotential(vm.as_lm()), potential_params=vparams)
  with pytest.raises(ValueError, match="cfg must be an SMCConfig"):
    smc(lm, cfg={"num_particles": 4})


@pytest.mark.parametrize("kw, match", [
    (dict(num_particles=2.5), "num_particles must be an int >= 1, got 2.5"),
    (dict(num_particles=0), "num_particles must be an int >= 1"),
    (dict(max_new_tokens=True), "max_new_tokens must be an int >= 1"),
    (dict(max_step_tokens=-1), "max_step_tokens must be >= 0"),
    (dict(select="resample"), "select must be a SelectionStrategy"),
])
def test_smc_config_fields_are_checked(kw, match):
  with pytest.raises(ValueError, match=match):
    SMCConfig(**kw)


STRATEGIES = {"pf": lambda: particle_filter(4, max_new_tokens=6, delimiters=(7,), max_step_tokens=2),
              "pf-every-step": lambda: particle_filter(4, scheme="multinomial", ess_threshold=1.0, max_new_tokens=6,
                                                       max_step_tokens=2),
              "best-of-n": lambda: best_of_n(4, max_new_tokens=6, max_step_tokens=2),
              "beam": lambda: beam_search(4, 2, max_new_tokens=6, max_step_tokens=2),
              "dvts": lambda: dvts(4, 2, max_new_tokens=6, max_step_tokens=2)}


def _bad_potential(bad):
  def potential(tokens, lengths, done):  # one particle of prompt 0 is bad once it has tokens
    del tokens, done
    v = jnp.zeros(lengths.shape, jnp.float32)
    return jnp.where((jnp.arange(4)[None] == 1) & (jnp.arange(2)[:, None] == 0) & (lengths > 0), bad, v)
  return potential


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_plus_inf_potentials_are_errors_for_every_strategy(lm, name, bad):
  with pytest.raises(ValueError, match="NaN or \\+inf"):
    smc(lm, cfg=STRATEGIES[name](), potential=_bad_potential(bad))


class _HostNaN(HostScored):
  """A potential whose scores come from the host: NaN for particle 1 of prompt 0."""

  def host_score(self, prompt_tokens, prompt_lengths, tokens, lengths, done, extended, capacity):
    out = np.zeros(lengths.shape, np.float32)
    out[0, 1] = np.nan
    return out


def test_nan_potentials_are_errors_when_the_engine_runs_from_the_host(lm):
  """The host-driven loop (`smc.host_steps`) checks the flags of its last step's end."""
  with pytest.raises(ValueError, match="NaN or \\+inf in log_weights"):
    smc(lm, cfg=STRATEGIES["best-of-n"](), potential=_HostNaN())


def test_nan_potentials_are_errors_on_a_mesh(lm):
  """The per-device path checks the same flags (computed in its program)."""
  from tts_jax.parallel import make_mesh
  with pytest.raises(ValueError, match="NaN or \\+inf in log Z"):
    smc(lm, cfg=STRATEGIES["pf"](), potential=_bad_potential(np.nan), mesh=make_mesh())


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_minus_inf_is_a_zero_weight_and_a_prompt_without_weight_fails(lm, name):
  """Prompt 0: every particle gets -inf (no positive weight): it is never resampled (each
  particle stays its own ancestor) and its log Z is -inf. Prompt 1: one particle at -inf, the
  others finite: resampling never picks it; log Z stays finite."""
  def potential(tokens, lengths, done):
    del tokens, done
    started = lengths > 0
    row0 = (jnp.arange(2)[:, None] == 0) & started
    one = (jnp.arange(2)[:, None] == 1) & (jnp.arange(4)[None] == 2) & started
    return jnp.where(row0 | one, -jnp.inf, 0.0).astype(jnp.float32)
  p = smc(lm, cfg=STRATEGIES[name](), potential=potential)
  log_z = np.asarray(p.final_log_z())
  assert np.isfinite(log_z[1]) and (log_z[0] == -np.inf or name in ("beam", "dvts"))
  if name.startswith("pf"):
    assert int(p.num_resamples[0]) == 0  # a failed prompt is never resampled
    if int(p.num_resamples[1]) > 0:  # the zero-weight particle is never an ancestor
      assert (np.asarray(p.ancestors[1]) != 2).all()
    if name == "pf-every-step":
      assert int(p.num_resamples[1]) > 0


def test_ess_keeps_precision_under_a_large_common_offset():
  lw = jnp.array([0.0, -1.0, -2.0, 0.5])
  base = float(ess(lw))
  assert abs(float(ess(lw + 1e4)) - base) < 1e-5 and abs(float(ess(lw - 1e4)) - base) < 1e-5
  assert float(ess(jnp.full((4,), -jnp.inf))) == 0.0


@pytest.mark.parametrize("t", [1e-8, 1e-30, float("inf"), True, -0.5, float("nan")])
def test_temperatures_that_would_overflow_are_refused(t):
  with pytest.raises(ValueError, match="temperature"):
    SamplingParams(temperature=t)


def test_a_model_with_nan_weights_does_not_sample_silently(lm):
  model, params = lm
  bad = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params)
  with pytest.raises(FloatingPointError, match="NaN or all -inf logits"):
    sample(model, bad, [[1, 2, 3]], key=jax.random.key(0), max_new_tokens=3)


@pytest.mark.parametrize("field, value, match", [
    ("seed", -1, "seed must be an int >= 0, got -1"),
    ("seed", 1.5, "seed must be an int >= 0"),
    ("num_problems", 0, "num_problems must be an int >= 1"),
    ("batch_problems", 2.0, "batch_problems must be an int >= 1"),
    ("budgets", (4, 2), "strictly increasing"),
    ("budgets", (0,), "positive ints"),
    ("methods", (), "at least one method"),
    ("sampling", {"temperature": 1.0}, "sampling must be a SamplingParams"),
])
def test_experiment_values_are_checked_when_built(field, value, match):
  from tts_jax.eval import Experiment, MajorityVote
  from tts_jax.tasks import ModChain
  kw = dict(name="x", task=ModChain(), methods=(MajorityVote(),))
  with pytest.raises(ValueError, match=match):
    Experiment(**{**kw, field: value})


@pytest.mark.parametrize("args, match", [
    (["run", "experiments/modchain/nope.py"], "nope.py"),
    (["run", "experiments/modchain/scaling.py", "--set", "seed=-1"], "seed must be an int >= 0"),
    (["run", "experiments/modchain/scaling.py", "--set", "bogus=1"], "bogus"),
    (["run", "experiments/modchain/scaling.py", "--set", "sampling.top_p=0"], r"top_p must be in \(0, 1\]"),
    (["run", "experiments/modchain/scaling.py", "--mesh", "data=3"], "devices, but 1 are visible"),
    (["run", "experiments/modchain/scaling.py", "--mesh", "tensor=2"], "unknown mesh axis 'tensor'"),
])
def test_cli_errors_are_one_line_without_a_traceback(args, match):
  out = subprocess.run([sys.executable, "-m", "tts_jax.cli", *args], capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert re.search(match, out.stderr), out.stderr[-2000:]
  assert last.startswith("tts-jax run:") or "error:" in last, last


def test_every_set_applies_in_order():
  """`--set a=1 --set b=2` keeps both (argparse's default action kept only the last --set)."""
  from tts_jax.cli import build_parser
  from tts_jax.config_files import apply_overrides, load_config
  for command in ("run", "train"):
    args = build_parser().parse_args([command, "e.py", "--set", "out_dir=/tmp/x", "seed=3", "--set", "seed=4"])
    assert args.set == ["out_dir=/tmp/x", "seed=3", "seed=4"]
  args = build_parser().parse_args(["run", "e.py", "--set", "out_dir=/tmp/x", "--set", "num_problems=25"])
  config = apply_overrides(load_config("experiments/modchain/scaling.py"), args.set)
  assert (config.out_dir, config.num_problems) == ("/tmp/x", 25)


def test_cli_debug_keeps_the_traceback():
  out = subprocess.run([sys.executable, "-m", "tts_jax.cli", "--debug", "run", "experiments/modchain/nope.py"],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and "Traceback" in out.stderr


@pytest.mark.parametrize("kind, field, value, match", [
    ("policy", "steps", 0, "PolicyTrainConfig.steps must be an int >= 1, got 0"),
    ("policy", "batch_size", 0, "batch_size must be an int >= 1"),
    ("policy", "eval_every", -1, "eval_every must be an int >= 0"),
    ("policy", "checkpoint_every", 0, "checkpoint_every must be an int >= 1"),
    ("policy", "optim.learning_rate", -1e-3, "OptimConfig.learning_rate must be > 0"),
    ("verifier", "steps", -5, "VerifierTrainConfig.steps must be an int >= 1"),
    ("verifier", "kind", "bm", "kind must be 'orm' or 'prm'"),
    ("verifier", "temperature", 0.0, "temperature > 0"),
])
def test_training_configs_are_checked(kind, field, value, match):
  from tts_jax.tasks import ModChain
  from tts_jax.train import OptimConfig, PolicyTrainConfig
  from tts_jax.train.verifier import VerifierTrainConfig
  with pytest.raises(ValueError, match=match):
    if field.startswith("optim."):
      OptimConfig(**{field[6:]: value})
    elif kind == "policy":
      PolicyTrainConfig(task=ModChain(), model=CFG, **{field: value})
    else:
      VerifierTrainConfig(**{"kind": "orm", "task": ModChain(), "policy_dir": "x", field: value})


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
  """This library's own model directory and a Hugging Face one, each written once."""
  from tts_jax.models import hf
  from tts_jax.models.io import save_model
  root = tmp_path_factory.mktemp("saved")
  model, params = init(CFG, 0)
  save_model(str(root / "own"), CFG, params)
  hf.save_pretrained(str(root / "hf"), CFG, params, "Qwen2ForCausalLM")
  from tts_jax.tasks.math.smoke import write_tokenizer
  write_tokenizer(str(root / "hf"), vocab_size=300)
  return root


@pytest.mark.parametrize("which, damage, match", [
    ("own", ("config.json", "{oops"), "config.json is not valid JSON: .* at line 1"),
    ("own", ("config.json", '{"kind": "policy"}'), "config.json: no 'model' field"),
    ("own", ("config.json", '{"kind": "policy", "model": {"vocab_size": 40}}'), "config.json: the model config is incomplete"),
    ("own", ("model.safetensors", b"\x10\x00\x00\x00garbage"), "model.safetensors is not a readable safetensors file"),
    ("hf", ("config.json", "[1, 2]"), "config.json must hold a JSON object"),
    ("hf", ("config.json", "{not json"), "config.json is not valid JSON"),
    ("hf", ("config.json", '{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 16}'),
     "config.json lacks required field\\(s\\): vocab_size, intermediate_size"),
    ("hf", ("model.safetensors", b"\x10\x00\x00\x00garbage"), "model.safetensors is not a readable safetensors file"),
])
def test_damaged_model_files_are_named(saved_models, tmp_path, which, damage, match):
  import shutil
  from tts_jax.models import hf
  from tts_jax.models.io import load_model
  path = tmp_path / which
  shutil.copytree(saved_models / which, path)
  name, content = damage
  (path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
  with pytest.raises(ValueError, match=match):
    load_model(str(path)) if which == "own" else hf.load(str(path))


def test_a_truncated_safetensors_file_is_named(saved_models, tmp_path):
  import shutil
  from tts_jax.models import hf
  path = tmp_path / "hf"
  shutil.copytree(saved_models / "hf", path)
  data = (path / "model.safetensors").read_bytes()
  (path / "model.safetensors").write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match="model.safetensors"):
    hf.load(str(path))


def test_format_1_checkpoints_load_with_their_lm_head_transposed(saved_models, tmp_path):
  """Checkpoints written before the LM head was stored [vocab, hidden] (config.json without a
  "format", lm_head [hidden, vocab]; the shipped models are such) load to the same params;
  an unknown format is refused by name."""
  import shutil
  from safetensors.numpy import load_file, save_file
  from tts_jax.models.io import load_model
  _, new, meta = load_model(str(saved_models / "own"))
  assert meta["format"] == 2 and new["lm_head"].shape == (CFG.vocab_size, CFG.hidden_size)
  old = tmp_path / "old"
  shutil.copytree(saved_models / "own", old)
  meta = json.loads((old / "config.json").read_text())
  (old / "config.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "format"}))
  tensors = load_file(str(old / "model.safetensors"))
  tensors["lm_head"] = np.ascontiguousarray(tensors["lm_head"].T)
  save_file(tensors, str(old / "model.safetensors"))
  _, legacy, _ = load_model(str(old))
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(legacy)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  (old / "config.json").write_text(json.dumps({**meta, "format": 3}))
  with pytest.raises(ValueError, match="checkpoint format 3"):
    load_model(str(old))
