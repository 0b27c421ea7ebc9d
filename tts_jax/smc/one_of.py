"""One of several selection strategies, chosen inside the engine's program.

    sel = OneOf.among([Beam(width=8), Resample("multinomial", 1.0), Resample()], Resample(ess_threshold=0.3))

The members are compiled as the branches of one `lax.switch` and `index` is traced, so
engine runs that differ only in their strategy (beam search, particle filtering and SMC at
one N, with one policy and potential) share one compiled program: an experiment comparing
them compiles the engine once per budget instead of once per method and budget. Each run
is the run its own strategy gives alone (only the chosen branch executes).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Sequence

import jax

from tts_jax.smc.particles import Particles
from tts_jax.smc.strategy import Selection, SelectionStrategy


@dataclasses.dataclass(frozen=True)
class OneOf(SelectionStrategy):
  """Selects by `strategies[index]`. Every member is compiled into the program; its traced
  fields are the program's arguments, so the members other than the chosen one may hold
  any values (`among` puts them at their program defaults)."""

  strategies: tuple[SelectionStrategy, ...] = ()
  index: int = 0

  traced: ClassVar[tuple[str, ...]] = ("index",)

  def __post_init__(self):
    if not self.strategies or not all(isinstance(s, SelectionStrategy) for s in self.strategies):
      raise ValueError(f"OneOf needs a non-empty tuple of SelectionStrategy, got {self.strategies!r}")
    if not 0 <= self.index < len(self.strategies):
      raise ValueError(f"OneOf.index must be in [0, {len(self.strategies)}), got {self.index}")

  @classmethod
  def among(cls, strategies: Sequence[SelectionStrategy], strategy: SelectionStrategy) -> OneOf:
    """`strategy` as one of `strategies` (compared by their program forms, `program()`; one
    of them must be `strategy`'s): every caller passing the same strategies gets the same
    `program()`, whichever member it selects by. The members are the distinct program
    forms, in order, with `strategy` itself in its place."""
    members = tuple(dict.fromkeys(s.program() for s in strategies))
    mine = strategy.program()
    if mine not in members:
      raise ValueError(f"{strategy!r} is not one of {members!r} (compare program forms: `program()`)")
    i = members.index(mine)
    return cls(strategies=members[:i] + (strategy,) + members[i + 1:], index=i)

  @property
  def chosen(self) -> SelectionStrategy:
    """The member selected by (outside a program, where `index` is an int)."""
    return self.strategies[self.index]

  def validate(self, num_particles: int) -> None:
    self.chosen.validate(num_particles)

  def check_reference(self) -> None:
    self.chosen.check_reference()

  def select(self, keys: jax.Array, particles: Particles) -> Selection:
    if isinstance(self.index, int):
      return self.chosen.select(keys, particles)
    branches = [lambda k, p, s=s: s.select(k, p) for s in self.strategies]
    return jax.lax.switch(self.index, branches, keys, particles)
