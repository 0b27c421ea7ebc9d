"""Loading Hugging Face checkpoints (Llama-3.x, Qwen2/2.5, Qwen3) from a local directory.

    lm, params, tokenizer = tts_jax.models.hf.load("path/to/Qwen2.5-Math-1.5B-Instruct")

The directory holds config.json, model.safetensors (or shards plus
model.safetensors.index.json), tokenizer.json and tokenizer_config.json.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
from flax import traverse_util
from safetensors import safe_open

from tts_jax.models.config import SUPPORTED_ROPE_TYPES, ModelConfig, RopeScaling
from tts_jax.models.lm import LanguageModel, abstract
from tts_jax.models.tokenizer import Tokenizer

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
# Reward-model architectures: (trunk family, reward head kind); see `load_reward_model`.
REWARD_ARCHITECTURES = {
    "Qwen2ForProcessRewardModel": ("qwen2", "two_layer"),   # Qwen2.5-Math-PRM
    "Qwen2ForPrmModel": ("qwen2", "linear"),                # Skywork-o1-Open-PRM (v_head.summary)
    "LlamaForSequenceClassification": ("llama", "seqcls"),
    "MistralForSequenceClassification": ("mistral", "seqcls"),
    "Qwen2ForSequenceClassification": ("qwen2", "seqcls"),
    **{arch: (family, "tokens") for arch, family in SUPPORTED_ARCHITECTURES.items()},  # "+" / "-" PRMs
}
# Our reward-head modules -> their tensor names in the checkpoints.
_HEAD_NAMES = {"score_0": "score.0", "score_2": "score.2", "value_head": "v_head.summary", "score": "score"}
# Buffers some checkpoints carry that are recomputed here.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
  """A checkpoint that does not match its config or this library."""


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint file missing: {path}")
  try:
    with open(path) as fh:
      data = json.load(fh)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path} is not valid JSON ({e})") from None
  if not isinstance(data, dict):
    raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
  return data


def _rope(hf: dict) -> tuple[float, RopeScaling | None]:
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  merged = {**scaling, **params}
  rope_type = merged.get("rope_type", merged.get("type", "default"))
  if rope_type not in SUPPORTED_ROPE_TYPES:
    raise CheckpointError(f"unsupported rope type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
  if rope_type == "default":
    return float(theta), None
  fields = {k: merged[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                   "original_max_position_embeddings") if k in merged}
  return float(theta), RopeScaling(rope_type=rope_type, **fields)


def config_from_hf(hf: dict, dtype: str = "float32") -> ModelConfig:
  """Translates a Hugging Face config.json dict into a `ModelConfig` (a missing required
  field is named)."""
  missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
             if k not in hf]
  if missing:
    raise CheckpointError(f"config.json lacks required field(s): {', '.join(missing)}")
  archs = hf.get("architectures") or []
  arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES or a in REWARD_ARCHITECTURES), None)
  if arch is None:
    raise CheckpointError(
        f"unsupported architecture {archs or hf.get('model_type')!r}; supported: "
        f"{', '.join(SUPPORTED_ARCHITECTURES)}; reward models also: "
        f"{', '.join(a for a in REWARD_ARCHITECTURES if a not in SUPPORTED_ARCHITECTURES)}")
  family = SUPPORTED_ARCHITECTURES.get(arch) or REWARD_ARCHITECTURES[arch][0]
  if hf.get("hidden_act", "silu") != "silu":
    raise CheckpointError(f"unsupported hidden_act {hf['hidden_act']!r}; only 'silu' (SwiGLU)")
  if hf.get("mlp_bias", False):
    raise CheckpointError("unsupported: mlp_bias=True")
  if hf.get("use_sliding_window", False):
    raise CheckpointError("unsupported: use_sliding_window=True (sliding-window attention)")
  theta, scaling = _rope(hf)
  heads = hf["num_attention_heads"]
  context = hf.get("max_position_embeddings", 4096)
  if family == "mistral" and hf.get("sliding_window"):
    # Mistral's sliding window equals full attention within it: the usable context is the window.
    context = min(context, int(hf["sliding_window"]))
  return ModelConfig(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      rope_theta=theta,
      rope_scaling=scaling,
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      attention_bias=True if family == "qwen2" else bool(hf.get("attention_bias", False)),
      attention_out_bias=family != "qwen2" and bool(hf.get("attention_bias", False)),
      qk_norm=family == "qwen3",
      max_position_embeddings=context,
      dtype=dtype,
      family=family,
  )


def _hf_name(path: tuple) -> tuple[str, bool]:
  """Our param path -> (Hugging Face tensor name, whether it is stored transposed)."""
  *mods, leaf = (str(p) for p in path)
  if len(mods) == 1 and mods[0] in _HEAD_NAMES:  # a reward head
    return f"{_HEAD_NAMES[mods[0]]}.{'weight' if leaf == 'kernel' else leaf}", leaf == "kernel"
  if mods == [] and leaf == "embed_tokens":
    return "model.embed_tokens.weight", False
  if mods == [] and leaf == "lm_head":
    return "lm_head.weight", False
  name = ".".join(["model", *mods, "weight" if leaf == "kernel" else leaf])
  return name, leaf == "kernel"


def _weight_files(path: str) -> dict[str, str]:
  """Tensor name -> safetensors file holding it."""
  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(index):
    weight_map = _read_json(index)["weight_map"]
    files = {n: os.path.join(path, f) for n, f in weight_map.items()}
    for f in sorted(set(files.values())):
      if not os.path.isfile(f):
        raise FileNotFoundError(f"checkpoint shard missing: {f} (listed in {index})")
    return files
  if os.path.isfile(single):
    try:
      with safe_open(single, framework="numpy") as fh:
        return {n: single for n in fh.keys()}
    except Exception as e:  # SafetensorError: a corrupt or truncated header
      raise CheckpointError(f"{single} is not a readable safetensors file (corrupt or truncated?): {e}") from None
  raise FileNotFoundError(f"no weights in {path}: expected model.safetensors or model.safetensors.index.json")


def load_params(path: str, lm: LanguageModel, abstract_params: dict) -> dict:
  """Reads and checks the safetensors weights of `path` into a params pytree of `lm`'s dtype."""
  files = _weight_files(path)
  flat = traverse_util.flatten_dict(abstract_params)
  expected = {}
  for p, leaf in flat.items():
    name, transposed = _hf_name(p)
    shape = tuple(leaf.shape[::-1]) if transposed else tuple(leaf.shape)
    expected[name] = (p, transposed, shape)
  present = {n for n in files if not n.endswith(_IGNORED_SUFFIXES)}
  if lm.config.tie_word_embeddings:
    present.discard("lm_head.weight")  # some tied checkpoints store the copy too
  missing = sorted(set(expected) - present)
  unexpected = sorted(present - set(expected))
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"missing tensors ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
      parts.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:8])}"
                   f"{' ...' if len(unexpected) > 8 else ''}")
    raise CheckpointError(f"checkpoint {path} does not match its config: " + "; ".join(parts))
  dtype = lm.config.jnp_dtype
  out = {}
  handles = {}
  try:
    for name, (p, transposed, shape) in expected.items():
      f = files[name]
      try:
        if f not in handles:
          handles[f] = safe_open(f, framework="flax")
        got = tuple(handles[f].get_slice(name).get_shape())
      except Exception as e:  # a corrupt header
        raise CheckpointError(f"{f} is not a readable safetensors file (corrupt or truncated?): {e}") from None
      if got != shape:
        raise CheckpointError(f"tensor {name} has shape {got} in the checkpoint but the config "
                              f"implies {shape}")
      try:
        x = jnp.asarray(handles[f].get_tensor(name))
      except Exception as e:  # truncated data
        raise CheckpointError(f"{f}: tensor {name} cannot be read (truncated file?): {e}") from None
      out[p] = (x.T if transposed else x).astype(dtype)
  finally:
    handles.clear()
  return traverse_util.unflatten_dict(out)


def load(path: str, dtype: str = "float32") -> tuple[LanguageModel, dict, Tokenizer]:
  """Loads a local Hugging Face model directory.

  Args:
    path: directory with config.json, safetensors weights, tokenizer.json and tokenizer_config.json.
    dtype: "float32" or "bfloat16" for params and activations.

  Returns:
    (LanguageModel, params (a nested dict of arrays), Tokenizer).

  Raises:
    FileNotFoundError: a required file is missing (named).
    CheckpointError: unsupported architecture, tensor shape mismatch, or missing /
      unexpected tensors (each named).
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"model directory not found: {path}")
  hf = _read_json(os.path.join(path, "config.json"))
  if not any(a in SUPPORTED_ARCHITECTURES for a in hf.get("architectures") or []) and \
      any(a in REWARD_ARCHITECTURES for a in hf.get("architectures") or []):
    raise CheckpointError(f"{path} is a reward model ({hf['architectures']}); load it with load_reward_model")
  config = config_from_hf(hf, dtype=dtype)
  tokenizer = Tokenizer.from_directory(path)
  lm, abstract_params = abstract(config)
  return lm, load_params(path, lm, abstract_params), tokenizer


def load_reward_model(path: str, dtype: str = "float32", *, good_token: str = "+", bad_token: str = "-"):
  """Loads a local reward-model directory as a `ValueModel` (`tts_jax.models.reward`).

  The head follows config.json's architecture: Qwen2ForProcessRewardModel (Qwen2.5-Math-PRM:
  2-class head at step separators), Qwen2ForPrmModel (Skywork-o1-Open-PRM: value head),
  *ForSequenceClassification (ORMs), or a causal LM (Math-Shepherd, RLHFlow PRMs) read as
  logit(good_token) - logit(bad_token), each token a single vocabulary entry.

  Returns (ValueModel, params, Tokenizer); sigmoid(values) is the probability of correct.
  Raises FileNotFoundError / CheckpointError naming the file, tensor or token.
  """
  from tts_jax.models.reward import RewardHead, abstract_reward  # noqa: PLC0415
  if not os.path.isdir(path):
    raise FileNotFoundError(f"model directory not found: {path}")
  hf = _read_json(os.path.join(path, "config.json"))
  config = config_from_hf(hf, dtype=dtype)
  arch = next(a for a in hf.get("architectures") or [] if a in REWARD_ARCHITECTURES)
  kind = REWARD_ARCHITECTURES[arch][1]
  tokenizer = Tokenizer.from_directory(path)
  if kind == "tokens":
    ids = []
    for t in (good_token, bad_token):
      enc = tokenizer.encode(t, add_special_tokens=False)
      if len(enc) != 1:
        raise CheckpointError(f"reward token {t!r} is {len(enc)} tokens in {path}'s tokenizer; it must be one")
      ids.append(enc[0])
    head = RewardHead("tokens", good=ids[0], bad=ids[1])
  elif kind == "seqcls":
    files = _weight_files(path)
    if "score.weight" not in files:
      raise CheckpointError(f"checkpoint {path} has no score.weight for its {arch} head")
    with safe_open(files["score.weight"], framework="numpy") as fh:
      labels = fh.get_slice("score.weight").get_shape()[0]
    head = RewardHead("seqcls", labels=labels)
  else:
    head = RewardHead(kind)
  vm, abstract_params = abstract_reward(config, head)
  return vm, load_params(path, vm.as_lm(), abstract_params), tokenizer


def config_to_hf(config: ModelConfig, architecture: str) -> dict:
  """The config.json of `config` for `architecture` (inverse of `config_from_hf`)."""
  if config.rope_scaling is not None:
    raise CheckpointError("writing rope-scaled configs is not supported")
  family = SUPPORTED_ARCHITECTURES.get(architecture) or REWARD_ARCHITECTURES.get(architecture, (None,))[0]
  if family is None:
    raise CheckpointError(f"unknown architecture {architecture!r}")
  return {"architectures": [architecture], "model_type": family, "vocab_size": config.vocab_size,
          "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
          "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
          "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim, "rope_theta": config.rope_theta,
          "rms_norm_eps": config.rms_norm_eps, "tie_word_embeddings": config.tie_word_embeddings,
          "max_position_embeddings": config.max_position_embeddings, "hidden_act": "silu",
          "attention_bias": config.attention_bias, "torch_dtype": config.dtype}


def save_pretrained(path: str, config: ModelConfig, params: dict, architecture: str) -> None:
  """Writes config.json and model.safetensors in the Hugging Face layout (tensor names and
  [out, in] kernels as transformers stores them), loadable by `load` / `load_reward_model`
  and by transformers. Reward heads are named as `REWARD_ARCHITECTURES`' checkpoints name them."""
  import numpy as np  # noqa: PLC0415
  from safetensors.numpy import save_file  # noqa: PLC0415
  os.makedirs(path, exist_ok=True)
  tensors = {}
  for p, x in traverse_util.flatten_dict(params).items():
    name, transposed = _hf_name(p)
    x = np.asarray(jnp.asarray(x, jnp.float32))
    tensors[name] = np.ascontiguousarray(x.T if transposed else x)
  save_file(tensors, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump(config_to_hf(config, architecture), fh, indent=1)
