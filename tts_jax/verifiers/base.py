"""Contract 2 of the design: a potential scores particles, log phi per particle.

PRMs, ORMs, twists' targets, exact checkers and LM judges all fit one protocol of
three pure, jittable methods:

    state = pot.init(params, prompt_tokens[B, Tp], prompt_lengths[B], num_particles, max_new_tokens)
    state = pot.advance(params, tokens[B, N], state, active[B, N])    # one token per particle
    log_phi[B, N], state = pot.score(params, state, tokens[B, N, T], lengths[B, N], done[B, N],
                                     extended[B, N])                  # at a step end

`score` is called when particles reach a step boundary; `extended` marks the ones that
grew since the last call (the others must keep their previous score). The state moves
with the particles when they are resampled: `gather_state(state, ancestors)` uses
`state.gather(ancestors)` if it has one, else indexes every leaf along axis 1.
A potential object is hashable (a static argument of jit); everything that varies
from batch to batch goes through `params` or `init`'s arguments, never hidden state.

Optional: `state = pot.grow(state, capacity)` for a state holding a per-token cache (a
value model's KV): the engine then calls `init` with its first cache capacity as
`max_new_tokens` and grows the state with the policy's cache (`tts_jax.smc.cache_schedule`).
A state with a `read` field int32[B] counts the ids its model has read (discarded particles
included); the engine reports it as `Particles.verified` (its cost).

Optional, for work only the host can do (a PRM that re-tokenizes the text, a checker without
array code): rather than calling back to the host inside `init` / `score` (`jax.pure_callback`,
whose programs JAX's persistent compilation cache never keeps), a potential may name that
work. `needs_host()` says whether it has any, and then

    host_init(prompt_tokens[B, Tp], prompt_lengths[B]) -> numpy pytree or None
    host_score(prompt_tokens, prompt_lengths, tokens[B, N, T], lengths[B, N], done[B, N],
               extended[B, N], capacity) -> numpy pytree      # capacity: the engine's cache slots

compute on the host (numpy in, numpy out) what `init` / `score` would call back for (every
leaf with a leading prompt axis [B, ...], row b a function of row b's inputs alone: on a mesh
each process calls them on its own devices' rows, one device's at a time), and
`with_host(potential, init=..., score=...)` (inside a program) gives the potential that reads
those arrays instead (`host_input`). `run_smc` then drives its loop from the host
(`tts_jax.smc.host_steps`) and no program of the run holds a callback.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

# fn(tokens int32[B, N, T], lengths int32[B, N], done bool[B, N]) -> log phi float32[B, N]
PotentialFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@runtime_checkable
class Potential(Protocol):
  """Scores particles at step boundaries (see the module docstring for shapes)."""

  def init(self, params: Any, prompt_tokens: jax.Array, prompt_lengths: jax.Array, num_particles: int,
           max_new_tokens: int) -> Any: ...

  def advance(self, params: Any, tokens: jax.Array, state: Any, active: jax.Array) -> Any: ...

  def score(self, params: Any, state: Any, tokens: jax.Array, lengths: jax.Array, done: jax.Array,
            extended: jax.Array) -> tuple[jax.Array, Any]: ...


def gather_state(state, ancestors: jax.Array):
  """The state of particles `ancestors` int32[B, N'] (per prompt): via `state.gather` if it
  has one, else every leaf is indexed along axis 1."""
  if hasattr(state, "gather"):
    return state.gather(ancestors)
  take = lambda x: jnp.take_along_axis(x, ancestors.reshape(ancestors.shape + (1,) * (x.ndim - 2)), axis=1)
  return jax.tree.map(take, state)


def needs_host(potential) -> bool:
  """Whether `potential` has host work it names (`host_init` / `host_score`, module docstring)."""
  return bool(getattr(potential, "needs_host", lambda: False)())


def with_host(potential, init=None, score=None):
  """`potential` reading `init` / `score` (arrays its `host_init` / `host_score` gave, traced
  inside a program) instead of calling back to the host. A copy: the hashable potential, the
  program's static argument, is unchanged."""
  fed = copy.copy(potential)
  object.__setattr__(fed, "_host_inputs", {"init": init, "score": score})  # a frozen dataclass
  return fed


def host_input(potential, name: str):
  """The arrays `with_host` gave `potential` for "init" or "score", or None (call back)."""
  return getattr(potential, "_host_inputs", {}).get(name)
