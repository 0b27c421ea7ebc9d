"""Device meshes and sharding: prompts over a "data" axis, parameters over a "model" axis."""

from tts_jax.parallel.mesh import (DATA, MODEL, batch_sharding, data_size, describe, device_rows, each_device,
                                   host_each_device, host_rows, make_mesh, pad_rows, padded_rows, parse_mesh,
                                   per_device, put, replicated, shard_batch, to_host, unpad)
from tts_jax.parallel.rules import RULES, param_specs, place_params

__all__ = ["DATA", "MODEL", "RULES", "batch_sharding", "data_size", "describe", "device_rows", "each_device",
           "host_each_device", "host_rows", "make_mesh", "pad_rows", "padded_rows", "param_specs", "per_device", "parse_mesh", "place_params", "put",
           "replicated", "shard_batch", "to_host", "unpad"]
