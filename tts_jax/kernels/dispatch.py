"""Which attention path a model takes."""

import jax


def use_pallas(attention_impl: str) -> tuple[bool, bool]:
  """(use the Pallas kernels, in interpret mode) for a ModelConfig.attention_impl:
  "xla" never; "pallas" always (interpreted on CPU); "auto" on GPU and TPU only."""
  backend = jax.default_backend()
  if attention_impl == "xla":
    return False, False
  if attention_impl == "pallas":
    return True, backend == "cpu"
  return backend in ("gpu", "tpu"), False
