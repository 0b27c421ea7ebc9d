"""Tiling plans for the Pallas kernels: block sizes, padding and on-chip bytes per backend.

A kernel never sees a raw model shape. The wrapper pads the head dim, the query rows
(N samples x G query heads of a KV head, or prompt positions) and the key axis to
what the lowering target needs, and a plan says how the padded problem is cut:

    plan = plan_decode(num_rows=n * g, prompt_len=tp, suffix_len=ts, groups=g, head_dim=d,
                       dtype=jnp.bfloat16, batch=b, kv_heads=hkv, target=H100)
    plan.prefix_bytes(), plan.suffix_bytes()   # each program's on-chip working set
    plan = plan_prefill(seq_len=t, head_dim=d, dtype=jnp.bfloat16, target=H100)

Targets:
  H100 (Pallas Triton): every in-kernel array has a power-of-two size; a program's
    shared memory (query tile + `stages` buffers of each K and V block + the
    probabilities + the accumulator, counted as if all of them were staged) must fit
    227 KiB per block; splitting the prompt across programs (flash-decoding) targets
    two programs per SM so one prompt fills the GPU.
  TPU (Pallas Mosaic): blocks' last two dims are multiples of (8, 128); the working set
    (K and V are whole single-buffered VMEM blocks per program) fits 56 MiB of
    VMEM (v5e / v6e have 128 MiB, v7x 64 MiB), which the kernels request as their limit.
A shape no plan fits raises `UnsupportedShape` naming the constraint.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp


class UnsupportedShape(ValueError):
  """No kernel configuration fits this shape on this target."""


@dataclasses.dataclass(frozen=True)
class Target:
  """What a lowering target asks of a kernel.

  name: "gpu" or "tpu". onchip_bytes: per-program budget (GPU shared memory per block /
  TPU scoped VMEM). pow2: every in-kernel array has a power-of-two size (Triton).
  lane: the head dim is padded to a multiple of this. row_multiple: query-row tiles are
  multiples of this. key_multiple: key blocks are multiples of this. stages: buffers per
  streamed K / V block. programs: parallel programs that fill the chip (flash-decoding
  splits the prompt until there are about this many). row_tiles / key_blocks: the sizes
  the planner tries, largest first.
  """

  name: str
  onchip_bytes: int
  pow2: bool
  lane: int
  row_multiple: int
  key_multiple: int
  stages: int
  programs: int
  row_tiles: tuple[int, ...]
  key_blocks: tuple[int, ...]


H100 = Target(name="gpu", onchip_bytes=227 * 1024, pow2=True, lane=16, row_multiple=16, key_multiple=16,
              stages=2, programs=2 * 132, row_tiles=(64, 32, 16), key_blocks=(64, 32, 16))
TPU = Target(name="tpu", onchip_bytes=56 * 1024 * 1024, pow2=False, lane=128, row_multiple=8, key_multiple=128,
             stages=2, programs=2, row_tiles=(256, 128, 64, 32, 16, 8), key_blocks=(512, 256, 128))


def target_for(platform: str | None) -> Target:
  """The plan target of a lowering platform; CPU (interpret mode) runs the GPU plan, so
  the tests execute the very tiling the GPU compiles."""
  if platform == "tpu":
    return TPU
  if platform in (None, "cpu", "gpu", "cuda", "rocm"):
    return H100
  raise ValueError(f"unknown platform {platform!r}; expected 'cpu', 'gpu', 'cuda', 'rocm' or 'tpu'")


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def next_pow2(x: int) -> int:
  return 1 << max(0, (x - 1).bit_length())


def padded_head_dim(d: int, target: Target) -> int:
  """Head dim as the kernel sees it: a power of two (Triton) or a multiple of 128 (TPU)."""
  return max(next_pow2(d), target.lane) if target.pow2 else round_up(d, target.lane)


def _itemsize(dtype) -> int:
  return jnp.dtype(dtype).itemsize


def _program_bytes(rows: int, keys: int, d: int, itemsize: int, target: Target, resident: int = 0) -> int:
  """On-chip bytes of one online-softmax program: the query tile, `stages` buffers of a
  K and a V block (TPU: one buffer each of the `resident` keys the program holds), the
  probabilities cast to the value dtype, the float32 scores and accumulator and the
  running max / sum."""
  q = rows * d * itemsize
  # TPU: the K and V blocks hold all `resident` keys, single-buffered (pl.Buffered(1)).
  kv = target.stages * 2 * keys * d * itemsize if target.pow2 else 2 * max(keys, resident) * d * itemsize
  scores = rows * keys * (4 + itemsize)
  acc = rows * d * 4 + 2 * rows * 4
  return q + kv + scores + acc


@dataclasses.dataclass(frozen=True)
class DecodePlan:
  """How `cascade_decode` cuts its problem.

  rows: query rows per phase-1 program (a tile of the N * G rows of one KV head);
  num_rows: N * G padded to a multiple of `rows`; head_dim: padded D;
  block_prefix: prompt keys per loop step; chunk: prompt keys per phase-1 program
  (splits = padded prompt / chunk, merged by log-sum-exp); prompt_len: padded Tp;
  groups: G padded (phase-2 rows); block_suffix / suffix_len: suffix keys per step / padded Ts.
  """

  rows: int
  num_rows: int
  head_dim: int
  block_prefix: int
  chunk: int
  prompt_len: int
  groups: int
  block_suffix: int
  suffix_len: int
  itemsize: int
  target: Target

  @property
  def splits(self) -> int:
    return self.prompt_len // self.chunk

  def prefix_bytes(self) -> int:
    """On-chip bytes of one phase-1 program (prompt KV)."""
    return _program_bytes(self.rows, self.block_prefix, self.head_dim, self.itemsize, self.target,
                          self.chunk)

  def suffix_bytes(self) -> int:
    """On-chip bytes of one phase-2 program (a sample's suffix KV)."""
    return _program_bytes(self.groups, self.block_suffix, self.head_dim, self.itemsize, self.target,
                          self.suffix_len)

  def onchip_bytes(self) -> int:
    return max(self.prefix_bytes(), self.suffix_bytes())


@dataclasses.dataclass(frozen=True)
class PrefillPlan:
  """How `flash_prefill` cuts its problem: block_q query rows and block_k keys per step,
  seq_len padded to a multiple of both, head_dim padded; the whole (padded) K and V of a
  head are addressable by a program (Triton: a pointer; TPU: one VMEM block each)."""

  block_q: int
  block_k: int
  seq_len: int
  head_dim: int
  itemsize: int
  target: Target

  def onchip_bytes(self) -> int:
    return _program_bytes(self.block_q, self.block_k, self.head_dim, self.itemsize, self.target, self.seq_len)


def _fits(nbytes: int, target: Target) -> bool:
  return nbytes <= target.onchip_bytes


def _no_fit(what: str, nbytes: int, target: Target) -> UnsupportedShape:
  return UnsupportedShape(f"{what}: the smallest tiling needs {nbytes} bytes on chip per program, more than the "
                          f"{target.onchip_bytes} bytes a {target.name} program has "
                          f"({'shared memory per block' if target.name == 'gpu' else 'scoped VMEM'})")


def plan_decode(num_rows: int, prompt_len: int, suffix_len: int, groups: int, head_dim: int, dtype,
                batch: int = 1, kv_heads: int = 1, target: Target = H100) -> DecodePlan:
  """The tiling of `cascade_decode` for N * G = num_rows query rows per KV head.

  Row tiles: the largest of `target.row_tiles` whose program fits, never more than the
  rows need. Prompt split: enough chunks that batch * kv_heads * row tiles * splits
  reaches `target.programs` (never a chunk shorter than one key block). Raises
  UnsupportedShape when even the smallest tiles do not fit.
  """
  for name, v in (("num_rows", num_rows), ("prompt_len", prompt_len), ("suffix_len", suffix_len),
                  ("groups", groups), ("head_dim", head_dim), ("batch", batch), ("kv_heads", kv_heads)):
    if not isinstance(v, int) or v < 1:
      raise UnsupportedShape(f"cascade_decode needs {name} >= 1, got {v!r}")
  isz = _itemsize(dtype)
  d = padded_head_dim(head_dim, target)
  fit = lambda n: next_pow2(n) if target.pow2 else round_up(n, target.row_multiple)  # noqa: E731
  keys = lambda n: max(target.key_multiple, next_pow2(n)) if target.pow2 else round_up(n, target.key_multiple)  # noqa: E731
  g = fit(groups)
  tile = next((r for r in target.row_tiles
               if _fits(_program_bytes(r, target.key_blocks[-1], d, isz, target), target)), None)
  if tile is None:
    raise _no_fit(f"cascade_decode prefix phase (head_dim {head_dim}, {isz}-byte {jnp.dtype(dtype).name})",
                  _program_bytes(target.row_tiles[-1], target.key_blocks[-1], d, isz, target), target)
  rows = min(tile, fit(round_up(num_rows, target.row_multiple)))
  fitting = [bk for bk in target.key_blocks if _fits(_program_bytes(rows, bk, d, isz, target), target)]
  # Prefer a key block that divides the prompt (an aligned cache is then never copied).
  bp = min(next((bk for bk in fitting if prompt_len % bk == 0), fitting[0]), keys(prompt_len))
  bs = next((bk for bk in target.key_blocks if _fits(_program_bytes(g, bk, d, isz, target), target)), None)
  if bs is None:
    raise _no_fit(f"cascade_decode suffix phase (G {groups}, head_dim {head_dim})",
                  _program_bytes(g, target.key_blocks[-1], d, isz, target), target)
  bs = min(bs, keys(suffix_len))
  suffix = round_up(suffix_len, bs)
  if not _fits(_program_bytes(g, bs, d, isz, target, suffix), target):
    raise _no_fit(f"cascade_decode suffix phase ({suffix_len} suffix slots, head_dim {head_dim})",
                  _program_bytes(g, bs, d, isz, target, suffix), target)
  num_rows_p = round_up(num_rows, rows)
  programs = batch * kv_heads * (num_rows_p // rows)
  blocks = -(-prompt_len // bp)
  # Flash-decoding: split the prompt into equal chunks of whole blocks, enough to fill the
  # chip (and, on TPU, to fit VMEM); a divisor of the block count, so nothing is padded.
  want = -(-target.programs // programs)
  while want < blocks and not _fits(_program_bytes(rows, bp, d, isz, target, -(-blocks // want) * bp), target):
    want += 1
  splits = max(s for s in range(1, min(blocks, want) + 1) if blocks % s == 0)
  chunk = blocks // splits * bp
  if not _fits(_program_bytes(rows, bp, d, isz, target, chunk), target):
    raise _no_fit(f"cascade_decode prefix phase ({prompt_len}-token prompt, head_dim {head_dim})",
                  _program_bytes(rows, bp, d, isz, target, chunk), target)
  return DecodePlan(rows=rows, num_rows=num_rows_p, head_dim=d, block_prefix=bp, chunk=chunk,
                    prompt_len=blocks * bp, groups=g, block_suffix=bs, suffix_len=suffix, itemsize=isz,
                    target=target)


def plan_prefill(seq_len: int, head_dim: int, dtype, target: Target = H100) -> PrefillPlan:
  """The tiling of `flash_prefill`: the largest (block_q, block_k) that fits, shrunk to the
  sequence; raises UnsupportedShape when none does."""
  if not isinstance(seq_len, int) or seq_len < 1 or not isinstance(head_dim, int) or head_dim < 1:
    raise UnsupportedShape(f"flash_prefill needs seq_len, head_dim >= 1, got {seq_len!r}, {head_dim!r}")
  isz = _itemsize(dtype)
  d = padded_head_dim(head_dim, target)
  cap = max(target.row_multiple, next_pow2(seq_len))
  smallest = None
  for bq in target.row_tiles:
    for bk in target.key_blocks:
      bq_, bk_ = min(bq, cap), (min(bk, max(target.key_multiple, next_pow2(seq_len))) if target.pow2 else bk)
      plan = PrefillPlan(block_q=bq_, block_k=bk_, seq_len=round_up(seq_len, math.lcm(bq_, bk_)), head_dim=d,
                         itemsize=isz, target=target)
      smallest = plan
      if _fits(plan.onchip_bytes(), target):
        return plan
  raise _no_fit(f"flash_prefill (seq_len {seq_len}, head_dim {head_dim}, {isz}-byte {jnp.dtype(dtype).name})",
                smallest.onchip_bytes(), target)
