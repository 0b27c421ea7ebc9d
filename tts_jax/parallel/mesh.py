"""A device mesh with a data axis and a model axis, and placing a batch of prompts on it.

    mesh = make_mesh(data=4, model=2)          # or make_mesh() : every device on "data"
    tokens, lengths, keys = shard_batch(mesh, tokens, lengths, keys)   # padded, on "data"

Prompts (and everything with a leading prompt axis: their samples, particles, caches)
are split over the "data" axis: a prompt's samples and particles stay on one device, so
resampling and voting among them never cross devices. Parameters are replicated over
"data" and split over "model" by `tts_jax.parallel.rules`. The batch is padded to a
multiple of the data axis with copies of its first row, and results are cut back, so
nothing is dropped or duplicated and a prompt's result does not depend on the device
count (every prompt draws from its own key).
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA, MODEL = "data", "model"


def make_mesh(data: int | None = None, model: int = 1, devices=None) -> Mesh:
  """A 2-D mesh ("data", "model") over `devices` (default: all of `jax.devices()`, every
  process's on a multi-host run). data: default all devices / model. The product must
  equal the number of devices."""
  devices = list(jax.devices() if devices is None else devices)
  if not isinstance(model, int) or model < 1:
    raise ValueError(f"mesh model axis must be an int >= 1, got {model!r}")
  if data is None:
    if len(devices) % model:
      raise ValueError(f"model={model} does not divide the {len(devices)} devices")
    data = len(devices) // model
  if not isinstance(data, int) or data < 1:
    raise ValueError(f"mesh data axis must be an int >= 1, got {data!r}")
  if data * model != len(devices):
    raise ValueError(f"mesh data={data} x model={model} = {data * model} devices, but {len(devices)} "
                     f"are visible ({jax.devices()[0].platform}); set the axes to multiply to the device count")
  return Mesh(np.asarray(devices, dtype=object).reshape(data, model), (DATA, MODEL))


def parse_mesh(spec: str) -> dict[str, int]:
  """'data=4,model=2' -> {'data': 4, 'model': 2} (either may be left out; 'auto' = all
  devices on data). Unknown axes and malformed sizes are named in the error."""
  spec = spec.strip()
  if spec in ("", "auto"):
    return {}
  out = {}
  for part in spec.split(","):
    m = re.fullmatch(r"\s*(\w+)\s*=\s*(\d+)\s*", part)
    if not m:
      raise ValueError(f"--mesh expects axis=size pairs such as 'data=4,model=2', got {spec!r}")
    axis, size = m.group(1), int(m.group(2))
    if axis not in (DATA, MODEL):
      raise ValueError(f"unknown mesh axis {axis!r} in --mesh {spec!r}; the axes are 'data' and 'model'")
    if axis in out:
      raise ValueError(f"mesh axis {axis!r} given twice in --mesh {spec!r}")
    if size < 1:
      raise ValueError(f"mesh axis {axis}={size} must be >= 1")
    out[axis] = size
  return out


def data_size(mesh: Mesh | None) -> int:
  """The number of devices prompts are split over (1 without a mesh)."""
  return 1 if mesh is None else mesh.shape[DATA]


def padded_rows(rows: int, mesh: Mesh | None) -> int:
  """`rows` rounded up to a multiple of the data axis."""
  d = data_size(mesh)
  return -(-rows // d) * d


def pad_rows(x, rows: int):
  """x with its leading axis grown to `rows` by copies of its first row (numpy or jax)."""
  pad = rows - x.shape[0]
  if pad <= 0:
    return x
  lib = np if isinstance(x, np.ndarray) else jax.numpy
  return lib.concatenate([x, lib.repeat(x[:1], pad, axis=0)])


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading axis on "data", the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(DATA, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def put(x, sharding: NamedSharding):
  """x (numpy, jax or PRNG key array) placed with `sharding`. Works on multi-process runs,
  where the sharding spans other processes' devices: every process passes the same whole
  array and keeps its own shards (key arrays travel as their uint32 key data). An array
  already placed so is returned as is."""
  if isinstance(x, jax.Array) and x.sharding == sharding:
    return x
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = put(np.asarray(jax.random.key_data(x)), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  if not sharding.is_fully_addressable:
    x = np.asarray(x)
  return jax.device_put(x, sharding)


def shard_batch(mesh: Mesh | None, *arrays):
  """Pads every array's leading (prompt) axis to a multiple of the data axis and places it
  split over "data". Without a mesh, returns the arrays unchanged. PRNG key arrays work."""
  if mesh is None:
    return arrays if len(arrays) != 1 else arrays[0]
  rows = padded_rows(arrays[0].shape[0], mesh)
  out = tuple(put(pad_rows(x, rows), batch_sharding(mesh, x.ndim)) for x in arrays)
  return out if len(out) != 1 else out[0]


def to_host(tree):
  """numpy copies of every array leaf (None leaves stay None). On a multi-process run an
  array sharded over other processes' devices is gathered: every process gets all of it."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(get, tree)


def unpad(tree, rows: int):
  """Cuts every leaf's leading axis back to `rows` (after `shard_batch`); scalars (state
  shared by all rows, e.g. a cache's write slot) are kept."""
  return jax.tree.map(lambda x: x[:rows] if x.ndim else x, tree)


def per_device(mesh: Mesh, fn, *batched):
  """fn(*shards) on every device's shard of `batched` (arrays split over "data" on their
  leading axis; closed-over values are replicated), under `jax.shard_map`: each device runs
  the same program as a single-device call on its rows (its own loops, no collectives), so
  its results do not depend on the number of devices. Returns the outputs concatenated
  over "data" (a pytree of arrays with a leading row axis)."""
  spec = PartitionSpec(DATA)
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(batched), out_specs=spec, check_vma=False)(*batched)


def each_device(mesh: Mesh | None, part, rows, carry=None, rows_out: bool = False):
  """part(*rows), or part(carry, *rows), inside a program; with a data-only mesh on every
  device's rows (`per_device`), for loops whose parts run as separate programs with host work
  between them. rows: pytrees with a leading prompt axis, split over "data". A carry (state
  that stays on its devices between the parts, per-device scalars included) has a leading
  device axis, and so has every output (rows_out=False: the next part's carry) or none
  (rows_out=True: outputs with a leading prompt axis, concatenated over "data"). Without a
  mesh, or with a model axis (XLA partitions the program), part runs as it is."""
  if mesh is None or mesh.shape[MODEL] > 1:
    return part(*rows) if carry is None else part(carry, *rows)

  def local(*args):
    if carry is not None:
      args = (jax.tree.map(lambda x: x[0], args[0]),) + args[1:]
    out = part(*args)
    return out if rows_out else jax.tree.map(lambda x: x[None], out)
  return per_device(mesh, local, *rows) if carry is None else per_device(mesh, local, carry, *rows)


def host_each_device(mesh: Mesh, fn, *arrays):
  """fn on the host for each of this process's devices on a data-only mesh, and its results
  as global arrays split over "data": the host side of an `each_device` loop.

  arrays: global arrays with a leading device axis [D, ...] (an `each_device` carry's
  leaves). fn(d, *shards) gets device d's numpy shards (without the device axis) and returns
  a pytree of numpy arrays with a leading row axis, the same shapes for every d. Returns those
  rows concatenated over the devices, [D * rows, ...], each device's on it. A process reads
  and computes only its own devices' rows (no gather), so on a multi-process run the host
  work is split as the devices are."""
  devices = list(mesh.devices[:, 0])
  mine = [(d, dev) for d, dev in enumerate(devices) if dev.process_index == jax.process_index()]

  def shard(x, dev):
    return np.asarray(next(s.data for s in x.addressable_shards if s.device == dev))[0]
  outs = [fn(d, *(shard(x, dev) for x in arrays)) for d, dev in mine]

  def assemble(*parts):
    shape = (len(devices) * parts[0].shape[0],) + parts[0].shape[1:]
    return jax.make_array_from_single_device_arrays(
        shape, batch_sharding(mesh, len(shape)), [jax.device_put(x, dev) for x, (_, dev) in zip(parts, mine)])
  return jax.tree.map(assemble, *outs)


def host_rows(mesh: Mesh | None, fn, *arrays):
  """The host side of a loop run as programs (`each_device`): fn(d, *numpy arrays) per device
  of this process on a data-only mesh (`host_each_device`: arrays with a device axis, fn gets
  device d's rows), else once on all rows (d = 0, arrays gathered by `to_host`), its results
  then split over "data" when there is a mesh (a model axis: XLA partitions the programs)."""
  if mesh is not None and mesh.shape[MODEL] == 1:
    return host_each_device(mesh, fn, *arrays)
  out = fn(0, *to_host(arrays))
  return out if mesh is None else jax.tree.map(lambda x: shard_batch(mesh, x), out)


def device_rows(mesh: Mesh | None, rows: int, d: int) -> slice:
  """The slice of `rows` prompt rows (padded to the data axis) that `host_rows` hands fn(d, ...)."""
  per = rows // (mesh.shape[DATA] if mesh is not None and mesh.shape[MODEL] == 1 else 1)
  return slice(d * per, (d + 1) * per)


def describe(mesh: Mesh | None) -> str:
  if mesh is None:
    return "no mesh (one device)"
  return (f"mesh data={mesh.shape[DATA]} x model={mesh.shape[MODEL]} over {math.prod(mesh.devices.shape)} "
          f"{mesh.devices.flat[0].platform} devices, {jax.process_count()} process(es)")
