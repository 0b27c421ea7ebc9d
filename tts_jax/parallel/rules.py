"""Logical-axis rules: which parameter axes split over the mesh's "model" axis.

Megatron-style tensor parallelism for the decoder: the q/k/v projections and the MLP's
gate/up projections split their output features (heads, intermediate units), o_proj and
down_proj their input features, the LM head its vocabulary; embeddings and norms are
replicated. An axis that the model axis does not divide is replicated (named by
`plan_params`), so every model runs on any mesh. XLA's SPMD partitioner inserts the
collectives; KV caches follow the k/v projections' head sharding.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tts_jax.parallel.mesh import MODEL, put

# (path suffix, the sharded axis of that parameter)
RULES: tuple[tuple[str, int], ...] = (
    ("q_proj/kernel", 1), ("k_proj/kernel", 1), ("v_proj/kernel", 1),
    ("q_proj/bias", 0), ("k_proj/bias", 0), ("v_proj/bias", 0),
    ("o_proj/kernel", 0),
    ("gate_proj/kernel", 1), ("up_proj/kernel", 1), ("down_proj/kernel", 0),
    ("lm_head", 0),  # [vocab, hidden]
)


def _path(keys) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)


def param_specs(params, model_size: int) -> tuple[object, list[str]]:
  """(PartitionSpec per leaf, notes on axes left replicated because `model_size` does not
  divide them)."""
  notes = []

  def spec(keys, x):
    path = _path(keys)
    for suffix, axis in RULES:
      if path.endswith(suffix) and x.ndim > axis:
        if model_size == 1:
          return PartitionSpec()
        if x.shape[axis] % model_size:
          notes.append(f"{path} {tuple(x.shape)}: axis {axis} not divisible by model={model_size}, replicated")
          return PartitionSpec()
        return PartitionSpec(*([None] * axis + [MODEL]))
    return PartitionSpec()

  return jax.tree_util.tree_map_with_path(spec, params), notes


def place_params(mesh: Mesh | None, params):
  """params replicated over "data" and split over "model" by `RULES` (unchanged without a mesh)."""
  if mesh is None:
    return params
  specs, _ = param_specs(params, mesh.shape[MODEL])
  return jax.tree.map(lambda x, s: put(x, NamedSharding(mesh, s)), params, specs)
