"""Which attention path a model takes, and the Pallas compiler params per target."""

from __future__ import annotations

import contextlib
import dataclasses

import jax

# (platform, kernel) pairs where the Pallas kernel was measured at least as fast as the
# XLA path by `benchmarks/gpu.py` (or its TPU counterpart) over the shape sweep. "auto"
# uses Pallas only for these; nothing has been measured yet, so "auto" is XLA everywhere.
# Add an entry only with the benchmark table in BENCHMARKS.md that justifies it.
MEASURED_FASTER: frozenset[tuple[str, str]] = frozenset()


_LOWERING_PLATFORM: list[str] = []


@contextlib.contextmanager
def lowering_platform(platform: str):
  """Within this block models trace their attention for `platform` ("cuda", "tpu") rather
  than the default backend: how `jax.export(..., platforms=[platform])` of a model's
  prefill / decode is checked on a CPU machine."""
  _LOWERING_PLATFORM.append(platform)
  try:
    yield
  finally:
    _LOWERING_PLATFORM.pop()


def current_platform() -> str:
  """The platform attention is traced for: `lowering_platform`'s, else the default backend
  ("gpu" and "cuda" / "rocm" are one platform here)."""
  platform = _LOWERING_PLATFORM[-1] if _LOWERING_PLATFORM else jax.default_backend()
  return "gpu" if platform in ("cuda", "rocm") else platform


@dataclasses.dataclass(frozen=True)
class AttentionPath:
  """pallas: use the Pallas kernel; interpret: run it in interpret mode (CPU); platform:
  the lowering target to pass to the kernel."""

  pallas: bool
  interpret: bool
  platform: str


def attention_path(attention_impl: str, kernel: str, platform: str | None = None) -> AttentionPath:
  """The path of a ModelConfig.attention_impl for kernel "prefill" or "decode".

  "xla": never Pallas. "pallas": always (interpreted on CPU; a shape the target cannot
  tile raises `UnsupportedShape` when traced). "auto": Pallas only where
  (platform, kernel) is in MEASURED_FASTER, else XLA, so it never crashes and is never
  slower than XLA.
  """
  if kernel not in ("prefill", "decode"):
    raise ValueError(f"kernel must be 'prefill' or 'decode', got {kernel!r}")
  platform = platform or current_platform()
  if attention_impl == "xla":
    return AttentionPath(False, False, platform)
  if attention_impl == "pallas":
    return AttentionPath(True, platform == "cpu", platform)
  if attention_impl == "auto":
    return AttentionPath((platform, kernel) in MEASURED_FASTER, False, platform)
  raise ValueError(f"attention_impl must be 'auto', 'xla' or 'pallas', got {attention_impl!r}")


def compiler_params(platform: str | None, onchip_bytes: int = 0):
  """Pallas compiler params for a lowering target (default: the current backend).

  GPU: the Triton backend (refs are global-memory pointers; each loop step loads one
  block, `num_stages` of them in flight). Why not Mosaic GPU: its kernels are written with
  warpgroup-level primitives (wgmma, TMA barriers) that have no CPU interpret mode, so they
  could not be checked against the references on a machine without a GPU; its generic
  BlockSpec path rejects these kernels' small per-row tensors (copies must be a multiple of
  the 128-thread warpgroup). TPU: Mosaic, with the VMEM limit raised to the plan's bytes.
  """
  platform = platform or jax.default_backend()
  if platform in ("gpu", "cuda", "rocm"):
    from jax.experimental.pallas import triton as pl_triton  # noqa: PLC0415 (GPU only)
    return pl_triton.CompilerParams(num_warps=4, num_stages=2)
  if platform == "tpu":
    from jax.experimental.pallas import tpu as pltpu  # noqa: PLC0415 (TPU only)
    return pltpu.CompilerParams(vmem_limit_bytes=max(32 * 1024 * 1024, int(onchip_bytes * 1.25)))
  return None
