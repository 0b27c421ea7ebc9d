"""Block-size helpers shared by the kernels."""

import jax.numpy as jnp


def check_powers_of_two(config) -> None:
  """Raises ValueError unless every field of a block-size config is a power of two."""
  for name, v in vars(config).items():
    if not isinstance(v, int) or v < 1 or v & (v - 1):
      raise ValueError(f"block sizes must be powers of two, got {name}={v!r} in {config}")


def pad_to_multiple(x, axis: int, multiple: int):
  """Zero-pads `axis` of x up to a multiple of `multiple`."""
  pad = (-x.shape[axis]) % multiple
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)
