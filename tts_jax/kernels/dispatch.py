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


def compiler_params(platform: str | None):
  """Pallas compiler params for a lowering target (default: the current backend). On GPU the
  kernels use the Triton backend: refs are global-memory pointers and each loop step loads one
  block (the Mosaic GPU backend would stage whole K/V blocks in shared memory)."""
  from jax.experimental.pallas import triton as pl_triton  # noqa: PLC0415 (GPU only)
  platform = platform or jax.default_backend()
  return pl_triton.CompilerParams(num_warps=4, num_stages=2) if platform in ("gpu", "cuda", "rocm") else None
