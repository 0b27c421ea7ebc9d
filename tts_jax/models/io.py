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


def save_model(path: str, config: ModelConfig, params: dict, kind: str = "policy", info: dict | None = None) -> None:
  """Writes `path`/config.json ({"kind", "model", "info"}) and `path`/model.safetensors."""
  os.makedirs(path, exist_ok=True)
  flat = traverse_util.flatten_dict(params)
  tensors = {_SEP.join(map(str, k)): np.asarray(jax.device_get(v)) for k, v in flat.items()}
  save_file(tensors, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump({"kind": kind, "model": config_to_dict(config), "info": info or {}}, fh, indent=1)


def _unflatten(tensors: dict) -> dict:
  def key(part: str):
    return int(part) if part.isdigit() else part
  return traverse_util.unflatten_dict({tuple(key(p) for p in k.split(_SEP)): v for k, v in tensors.items()})


def load_model(path: str):
  """-> (LanguageModel or ValueModel by config.json's "kind", params, config.json dict).

  Raises FileNotFoundError for a missing file and ValueError naming any tensor that is
  missing, unexpected or of the wrong shape."""
  cfg_file, w_file = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
  for f in (cfg_file, w_file):
    if not os.path.isfile(f):
      raise FileNotFoundError(f"model file missing: {f}")
  with open(cfg_file) as fh:
    meta = json.load(fh)
  config = config_from_dict(meta["model"])
  model, expected = abstract(config) if meta.get("kind", "policy") == "policy" else abstract_value(config)
  params = _unflatten(load_file(w_file))
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

