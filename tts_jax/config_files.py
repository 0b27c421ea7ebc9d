"""Experiment files and `--set key=value` overrides.

An experiment file is a Python file that builds one frozen dataclass named
`config` from the library's config classes; it holds no logic. Overrides address
nested fields with dots (`--set optim.learning_rate=1e-3 task.max_ops=7`) and are
parsed by the field's declared type.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import types
import typing
from typing import Any


class ConfigError(ValueError):
  """An experiment file or override that cannot be applied."""


def load_config(path: str) -> Any:
  """The `config` object of experiment file `path`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"experiment file not found: {path}")
  name = "_tts_experiment_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "config"):
    raise ConfigError(f"experiment file {path} defines no `config`")
  if not dataclasses.is_dataclass(module.config):
    raise ConfigError(f"`config` in {path} must be a dataclass instance, got {type(module.config).__name__}")
  return module.config


def _parse(text: str, tp, key: str):
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = typing.get_args(tp)
    if text in ("None", "none", "null") and type(None) in args:
      return None
    errors = []
    for a in args:
      if a is type(None):
        continue
      try:
        return _parse(text, a, key)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(f"--set {key}={text}: not a valid {tp}")
  if origin is typing.Literal:
    allowed = typing.get_args(tp)
    for a in allowed:
      if str(a) == text:
        return a
    raise ConfigError(f"--set {key}={text}: must be one of {', '.join(map(str, allowed))}")
  if tp is bool:
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(f"--set {key}={text}: expected a bool (true/false)")
  if tp in (int, float):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise ConfigError(f"--set {key}={text}: expected {tp.__name__}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (tp is int and not isinstance(value, int)):
      raise ConfigError(f"--set {key}={text}: expected {tp.__name__}")
    return tp(value)
  if tp is str:
    return text
  if origin is tuple:
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise ConfigError(f"--set {key}={text}: expected a tuple literal such as (1, 2, 4)") from None
    if not isinstance(value, (tuple, list)):
      value = (value,)
    args = typing.get_args(tp)
    elem = args[0] if args else None
    if elem is not None and elem is not Ellipsis and elem in (int, float, str):
      if not all(isinstance(v, elem) or (elem is float and isinstance(v, int)) for v in value):
        raise ConfigError(f"--set {key}={text}: expected a tuple of {elem.__name__}")
      value = [elem(v) for v in value]
    return tuple(value)
  raise ConfigError(f"--set {key}: fields of type {tp} cannot be set from the command line")


def override(config: Any, assignment: str) -> Any:
  """A copy of `config` with one `dotted.key=value` assignment applied."""
  if "=" not in assignment:
    raise ConfigError(f"override {assignment!r} must look like key=value")
  key, text = assignment.split("=", 1)
  return _set(config, key.strip().split("."), text.strip(), key.strip())


def _set(obj: Any, path: list[str], text: str, full_key: str) -> Any:
  if not dataclasses.is_dataclass(obj):
    raise ConfigError(f"unknown config key {full_key!r}: {type(obj).__name__} has no fields")
  fields = {f.name: f for f in dataclasses.fields(obj)}
  name = path[0]
  if name not in fields:
    raise ConfigError(f"unknown config key {full_key!r}; {type(obj).__name__} has: {', '.join(fields)}")
  if len(path) > 1:
    return dataclasses.replace(obj, **{name: _set(getattr(obj, name), path[1:], text, full_key)})
  hints = typing.get_type_hints(type(obj))
  try:
    return dataclasses.replace(obj, **{name: _parse(text, hints[name], full_key)})
  except (TypeError, ValueError) as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"--set {full_key}={text}: {e}") from None


def apply_overrides(config: Any, assignments: list[str] | tuple[str, ...]) -> Any:
  """Applies each `key=value` in order."""
  for a in assignments:
    config = override(config, a)
  return config


def to_dict(config: Any) -> dict:
  """A JSON-friendly dict of a (nested) config, with each dataclass's type name."""
  if dataclasses.is_dataclass(config):
    out = {"_type": type(config).__name__}
    for f in dataclasses.fields(config):
      out[f.name] = to_dict(getattr(config, f.name))
    return out
  if isinstance(config, (tuple, list)):
    return [to_dict(x) for x in config]
  return config
