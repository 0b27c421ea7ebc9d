"""Saving and loading this library's own models: config.json + model.safetensors."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from tts_jax.models.config import ModelConfig, RopeScaling
from tts_jax.models.lm import abstract
from tts_jax.models.twist_head import BoundedTwist
from tts_jax.models.value import abstract_value

_SEP = "/"


def config_to_dict(config: ModelConfig) -> dict:
  return dataclasses.asdict(config)


def config_from_dict(d: dict) -> ModelConfig:
  d = dict(d)
  if d.get("rope_scaling") is not None:
    d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise ValueError(f"unknown ModelConfig keys in config.json: {', '.join(unknown)}")
  return ModelConfig(**d)


FORMAT = 2  # 2: lm_head stored [vocab, hidden]; 1 (no "format" field): [hidden, vocab]


def save_model(path: str, config: ModelConfig, params: dict, kind: str = "policy", info: dict | None = None) -> None:
  """Writes `path`/config.json ({"kind", "format", "model", "info"}) and `path`/model.safetensors."""
  os.makedirs(path, exist_ok=True)
  flat = traverse_util.flatten_dict(params)
  tensors = {_SEP.join(map(str, k)): np.asarray(jax.device_get(v)) for k, v in flat.items()}
  save_file(tensors, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump({"kind": kind, "format": FORMAT, "model": config_to_dict(config), "info": info or {}}, fh, indent=1)


def read_json(path: str):
  """json.load of `path`, an error naming the file (and where) if it is not JSON."""
  try:
    with open(path) as fh:
      return json.load(fh)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
  except UnicodeDecodeError:
    raise ValueError(f"{path} is not a text (UTF-8) JSON file") from None


def read_safetensors(path: str) -> dict:
  """The tensors of a safetensors file, an error naming the file if it is corrupt or truncated."""
  try:
    return load_file(path)
  except Exception as e:  # safetensors raises its own SafetensorError (and others for truncation)
    raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from None


def _unflatten(tensors: dict) -> dict:
  def key(part: str):
    return int(part) if part.isdigit() else part
  return traverse_util.unflatten_dict({tuple(key(p) for p in k.split(_SEP)): v for k, v in tensors.items()})


def load_model(path: str):
  """-> (model, params, config.json dict); the model by config.json's "kind": a LanguageModel
  ("policy"), a `BoundedTwist` of one ("twist", its eps from info), else a ValueModel.

  Raises FileNotFoundError for a missing file and ValueError naming any tensor that is
  missing, unexpected or of the wrong shape."""
  cfg_file, w_file = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
  for f in (cfg_file, w_file):
    if not os.path.isfile(f):
      raise FileNotFoundError(f"model file missing: {f}")
  meta = read_json(cfg_file)
  if not isinstance(meta, dict) or "model" not in meta:
    raise ValueError(f"{cfg_file}: no 'model' field (this library's model config holds kind, model, info)")
  try:
    config = config_from_dict(meta["model"])
  except TypeError as e:  # a missing or misspelt field
    raise ValueError(f"{cfg_file}: the model config is incomplete or malformed ({e})") from None
  kind = meta.get("kind", "policy")
  model, expected = abstract(config) if kind in ("policy", "twist") else abstract_value(config)
  if kind == "twist":
    eps = (meta.get("info") or {}).get("eps")
    if not isinstance(eps, (int, float)) or not 0 < eps < 0.5:
      raise ValueError(f"{cfg_file}: a twist model needs info.eps in (0, 0.5) (its log psi bound), got {eps!r}")
    model = BoundedTwist(model, float(eps))
  params = _unflatten(read_safetensors(w_file))
  version = meta.get("format", 1)
  if version not in (1, FORMAT):
    raise ValueError(f"{cfg_file}: checkpoint format {version!r} is not one this version reads (1 or {FORMAT})")
  if version == 1 and "lm_head" in params:  # written before the LM head was stored [vocab, hidden]
    params["lm_head"] = np.ascontiguousarray(params["lm_head"].T)
  want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(expected).items()}
  got = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(params).items()}
  if set(want) != set(got):
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    raise ValueError(f"{w_file} does not match its config: missing {missing[:5]}, unexpected {extra[:5]}")
  for k in want:
    if want[k] != got[k]:
      raise ValueError(f"{w_file}: tensor {_SEP.join(map(str, k))} has shape {got[k]}, config implies {want[k]}")
  dtype = config.jnp_dtype
  params = jax.tree.map(lambda x: jax.numpy.asarray(x, dtype), params)
  return model, params, meta

