"""Configs whose named fields are arguments of a compiled program, not constants baked into it.

A config is a frozen dataclass (hashable: a static argument of `jax.jit`). The fields a
`Traced` config names in `traced` are passed to the program as scalar arrays, so configs
that differ only in them share one compiled program:

    program = cfg.program()   # the config with its traced fields at their defaults: the cache key
    knobs = cfg.knobs()       # their values, numpy scalars: the program's arguments
    ...                       # inside the program:
    bound = program.bind(knobs)   # the config with those fields set to the tracers

Fields holding `Traced` configs, or tuples of them, are recursed into (their knobs nest
under the field's name). A knob is float32 for a field whose default is a float, bool for a
bool, int32 otherwise; a string field listed in `choices` is passed as its index there
(`choice_index` reads such a field, a string outside programs, an int32 tracer inside).
`bind` sets fields without running `__init__`: the values were validated on the host.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar

import numpy as np


class Traced:
  """Mixin of frozen dataclass configs with traced fields (module docstring)."""

  traced: ClassVar[tuple[str, ...]] = ()  # fields passed to the program as arguments
  choices: ClassVar[dict[str, tuple[str, ...]]] = {}  # string fields' values, passed as their index

  def _traced_fields(self) -> dict[str, dataclasses.Field]:
    fields = {f.name: f for f in dataclasses.fields(self)}
    unknown = [name for name in self.traced if name not in fields]
    missing = [name for name in self.traced if name in fields and fields[name].default is dataclasses.MISSING]
    if unknown or missing:
      raise ValueError(f"{type(self).__name__}.traced must name fields with a default (the compiled program's): "
                       f"{unknown} are not fields, {missing} have no default")
    return {name: fields[name] for name in self.traced}

  def _nested(self) -> dict[str, Any]:
    """The fields holding Traced configs (or tuples of them), by name."""
    out = {}
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if isinstance(v, Traced) or (isinstance(v, tuple) and v and all(isinstance(x, Traced) for x in v)):
        out[f.name] = v
    return out

  def program(self):
    """The config a program is compiled (and cached) for: `traced` fields at their defaults,
    nested configs by their own `program()`, the other fields as they are."""
    updates = {name: f.default for name, f in self._traced_fields().items()}
    for name, v in self._nested().items():
      updates[name] = tuple(x.program() for x in v) if isinstance(v, tuple) else v.program()
    return dataclasses.replace(self, **updates)

  def knobs(self) -> dict[str, Any]:
    """The traced fields' values as numpy scalars (host: no program), nested configs' under
    their field's name (a list for a tuple of configs)."""
    out = {name: _knob(self, name, f.default) for name, f in self._traced_fields().items()}
    for name, v in self._nested().items():
      out[name] = [x.knobs() for x in v] if isinstance(v, tuple) else v.knobs()
    return out

  def bind(self, knobs: dict[str, Any]):
    """This config with its traced fields (and its nested configs') set to `knobs` (tracers
    inside a program). Keys must be exactly those of `knobs()`."""
    nested = self._nested()
    expected = set(self.traced) | set(nested)
    if set(knobs) != expected:
      raise ValueError(f"{type(self).__name__} traces {sorted(expected)}, got knobs {sorted(knobs)}")
    bound = copy.copy(self)
    for name in self.traced:
      object.__setattr__(bound, name, knobs[name])  # a frozen dataclass: no __init__ (no host checks on tracers)
    for name, v in nested.items():
      if isinstance(v, tuple) and len(knobs[name]) != len(v):
        raise ValueError(f"{type(self).__name__}.{name} holds {len(v)} configs, got knobs for {len(knobs[name])}")
      value = tuple(x.bind(k) for x, k in zip(v, knobs[name])) if isinstance(v, tuple) else v.bind(knobs[name])
      object.__setattr__(bound, name, value)
    return bound


def _knob(config: Traced, name: str, default) -> np.ndarray:
  value = getattr(config, name)
  if name in config.choices:
    return np.asarray(config.choices[name].index(value), np.int32)
  if isinstance(default, bool):
    return np.asarray(value, np.bool_)
  return np.asarray(value, np.float32 if isinstance(default, float) else np.int32)


def program_of(config):
  """`config.program()` for a `Traced` config; any other (hashable) object is its own program."""
  return config.program() if isinstance(config, Traced) else config


def knobs_of(config) -> dict[str, Any]:
  """`config.knobs()` for a `Traced` config, else {} (nothing traced)."""
  return config.knobs() if isinstance(config, Traced) else {}


def bind_of(config, knobs: dict[str, Any]):
  """`config.bind(knobs)` for a `Traced` config; any other object unchanged (`knobs` empty)."""
  return config.bind(knobs) if isinstance(config, Traced) else config


def choice_index(config: Traced, name: str):
  """The index of string field `name` in `config.choices[name]`: a Python int outside a
  program, the bound int32 tracer inside one."""
  value = getattr(config, name)
  return config.choices[name].index(value) if isinstance(value, str) else value
