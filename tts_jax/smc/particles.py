"""Contract 3 of the design: the particle state, one pytree, and moving particles.

Best-of-N, SMC, beam search and DVTS all run on `Particles`; a selection strategy
only decides ancestors, and `move` carries every per-particle field (tokens, weights,
hashes, pending logits, the policy's, the twist's and the potential's per-particle
state) to its new slot. Prompt-level fields (the prompt KV, log Z) never move.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from tts_jax.verifiers import gather_state


@struct.dataclass
class Particles:
  """N particles for each of B prompts; T = max_new_tokens, V = vocabulary.

  tokens: int32[B, N, T] generated tokens (pad after a particle's length).
  length: int32[B, N] tokens generated.
  logp / logq: float32[B, N, T] per-token log-probs under the model / the proposal.
  log_weights: float32[B, N] log importance weights since the last resampling.
  log_potential: float32[B, N] the current log phi_s (what beam search ranks by).
  log_twist: float32[B, N] log psi of the current prefix (0 without twists, or once done).
  log_z: float32[B] log Z accumulated at resamplings.
  done: bool[B, N] finished (absorbing: never extended again).
  steps: int32[B, N] steps taken.
  ancestors: int32[B, N] of the last selection.
  num_resamples: int32[B] selections applied.
  decoded: int32[B] policy tokens decoded (compute spent, discarded particles included).
  verified: int32[B] ids the potential's model read, when its state counts them (a `read`
    field int32[B], e.g. `StepTagPotential`), else 0.
  hash: uint32[B, N, 2] of the tokens (identical particles hash equal).
  logits: float32[B, N, V] pending next-token logits.
  twist_out: float32[B, N, V] pending next-token log-twists (None without twists).
  cache / twist_cache / potential_state: the policy's, the twist model's and the
    potential's per-particle state (each with `gather`).
  """

  tokens: jax.Array
  length: jax.Array
  logp: jax.Array
  logq: jax.Array
  log_weights: jax.Array
  log_potential: jax.Array
  log_twist: jax.Array
  log_z: jax.Array
  done: jax.Array
  steps: jax.Array
  ancestors: jax.Array
  num_resamples: jax.Array
  decoded: jax.Array
  verified: jax.Array
  hash: jax.Array
  logits: jax.Array
  twist_out: jax.Array | None
  cache: object
  twist_cache: object
  potential_state: object

  @property
  def shape(self) -> tuple[int, int]:
    """(B prompts, N particles per prompt)."""
    return self.length.shape

  def final_log_z(self) -> jax.Array:
    """log Z_hat float32[B]: the accumulated estimate times the mean current weight."""
    n = self.log_weights.shape[-1]
    return self.log_z + jax.nn.logsumexp(self.log_weights, axis=-1) - jnp.log(n)

  def normalized_weights(self) -> jax.Array:
    """float32[B, N] final importance weights, summing to 1 per prompt."""
    return _normalized_weights(self.log_weights)


# One compiled program: called on a finished run's host arrays, op by op it would compile (or
# load from the persistent cache) one small program per operation and shape; the same numbers
# bit for bit (tests/test_compilation.py). `final_log_z` stays op by op: compiled as one program,
# XLA rounds it differently in the last bit.
@jax.jit
def _normalized_weights(log_weights):
  return jax.nn.softmax(log_weights, axis=-1)


PER_PARTICLE = ("tokens", "length", "logp", "logq", "log_weights", "log_potential", "log_twist", "done", "steps",
                "hash", "logits", "twist_out")


def take_particles(x: jax.Array, ancestors: jax.Array) -> jax.Array:
  """x[b, ancestors[b, n], ...] for x of shape [B, N, ...] and ancestors int32[B, N']."""
  return jnp.take_along_axis(x, ancestors.reshape(ancestors.shape + (1,) * (x.ndim - 2)), axis=1)


def move(p: Particles, ancestors: jax.Array) -> Particles:
  """Particle n of prompt b becomes a copy of particle ancestors[b, n] (suffix state only)."""
  moved = {f: take_particles(getattr(p, f), ancestors) for f in PER_PARTICLE if getattr(p, f) is not None}
  return p.replace(**moved, cache=p.cache.gather(ancestors),
                   twist_cache=None if p.twist_cache is None else p.twist_cache.gather(ancestors),
                   potential_state=gather_state(p.potential_state, ancestors))
