"""Selection strategies: what happens to the particles after every step.

A strategy is a frozen dataclass (hashable: a static argument of jit) whose `select`
looks at the scored particles and returns a `Selection`: for each prompt, the
ancestor of every new particle slot, the slots' log-weights, the increment of the
running log Z, and whether the prompt was selected at all. The engine applies it,
for the prompts that still have unfinished particles only (a finished prompt is
never selected again), by moving suffix state (`tts_jax.smc.particles.move`).

Strategies here and elsewhere: `NoSelect` (best-of-N), `tts_jax.smc.Resample`
(SMC / particle filtering), `tts_jax.search.Beam` (beam search, DVTS). Adding one
is adding a file: subclass `SelectionStrategy`, implement `select` (see
docs/ARCHITECTURE.md for a worked example).

Fields a strategy names in `traced` are values in the engine's compiled program, not
constants baked into it (`tts_jax.traced.Traced`): configs that differ only in them (beam
search and DVTS at one N, or a sweep of beam widths) share one compiled program. The engine
compiles `program()` (those fields at their defaults) and passes `knobs()` as arguments,
which `bind` puts back, as tracers, into the strategy whose `select` it calls. Different
strategies share a program as the members of one `OneOf` (`tts_jax.smc.one_of`).
"""

from __future__ import annotations

import abc
import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from tts_jax.smc.particles import Particles, take_particles
from tts_jax.traced import Traced


@struct.dataclass
class Selection:
  """A strategy's decision for B prompts x N slots.

  ancestors: int32[B, N] new slot n of prompt b copies particle ancestors[b, n] of b.
  log_weights: float32[B, N] the new slots' log-weights.
  log_z_increment: float32[B] added to the running log Z estimate.
  selected: bool[B] prompts this selection applies to (elsewhere nothing changes).
  """

  ancestors: jax.Array
  log_weights: jax.Array
  log_z_increment: jax.Array
  selected: jax.Array


def keep_all(p: Particles) -> Selection:
  """The selection that changes nothing."""
  b, n = p.shape
  return Selection(ancestors=jnp.broadcast_to(jnp.arange(n), (b, n)), log_weights=p.log_weights,
                   log_z_increment=jnp.zeros((b,), jnp.float32), selected=jnp.zeros((b,), bool))


def copy_selected(p: Particles, ancestors: jax.Array) -> Selection:
  """Select `ancestors` int32[B, N] for every prompt, each slot keeping its ancestor's weight."""
  b, _ = p.shape
  return Selection(ancestors=ancestors, log_weights=take_particles(p.log_weights, ancestors),
                   log_z_increment=jnp.zeros((b,), jnp.float32), selected=jnp.ones((b,), bool))


class SelectionStrategy(Traced, abc.ABC):
  """Base of the selection strategies; subclasses are frozen dataclasses. Fields named in
  `traced` are arguments of the engine's program (module docstring; `tts_jax.traced`)."""

  @abc.abstractmethod
  def select(self, keys: jax.Array, particles: Particles) -> Selection:
    """keys: one PRNG key per prompt ([B]); particles: scored after this step."""

  def validate(self, num_particles: int) -> None:
    """Raises ValueError if the strategy cannot run with `num_particles` per prompt."""

  def check_reference(self) -> None:
    """Raises ValueError unless the strategy supports conditional SMC (a reference particle 0)."""
    raise ValueError(f"conditional SMC (a reference particle) is not defined for {type(self).__name__}; "
                     "use Resample('multinomial', ess_threshold=0 or 1)")


@dataclasses.dataclass(frozen=True)
class NoSelect(SelectionStrategy):
  """Nothing: N independent particles, scored at every step (best-of-N)."""

  def select(self, keys, particles):
    return keep_all(particles)
