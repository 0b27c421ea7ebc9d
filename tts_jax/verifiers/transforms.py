"""How a verifier's probability r is read as a log-potential: log r, or logit r.

A value model outputs a logit v = logit r. Transform "log" reads log r = log_sigmoid(v) (a
probability potential); "logit" reads v itself (Puri et al. 2025's particle weights).
Potentials trace their `transform` (`tts_jax.traced`): it is an argument of the engine's
program, passed as its index in `TRANSFORMS`, so runs of one model read either way share
one compiled program.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.traced import Traced

Transform = Literal["log", "logit"]
TRANSFORMS = ("log", "logit")


class TracedTransform(Traced):
  """Mixin of potentials with a `transform` field: traced, passed as its index in
  `TRANSFORMS`, so runs reading log r and logit r share one program."""

  traced: ClassVar[tuple[str, ...]] = ("transform",)
  choices: ClassVar[dict[str, tuple[str, ...]]] = {"transform": TRANSFORMS}


def check_transform(transform) -> None:
  """Raises ValueError unless `transform` is "log" or "logit"."""
  if transform not in TRANSFORMS:
    raise ValueError(f"transform must be 'log' or 'logit', got {transform!r}")


def _is_logit(transform):
  """transform: "log" / "logit", or its index in TRANSFORMS (an int32 tracer in a program)."""
  return transform == "logit" if isinstance(transform, str) else transform == TRANSFORMS.index("logit")


def read_logits(v: jax.Array, transform) -> jax.Array:
  """log r (`transform` "log") or logit r = v ("logit") of value logits v float32[...];
  transform may be its index in TRANSFORMS (traced). -> float32[...]"""
  if isinstance(transform, str):
    return v if transform == "logit" else jax.nn.log_sigmoid(v)
  return jnp.where(_is_logit(transform), v, jax.nn.log_sigmoid(v))


def read_probabilities(r: np.ndarray, transform) -> np.ndarray:
  """float32 log r or logit r of float64 probabilities r (host); transform as in `read_logits`
  but concrete (a string or an index)."""
  return (np.log(r / (1 - r)) if _is_logit(transform) else np.log(r)).astype(np.float32)
