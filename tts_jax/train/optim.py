"""The optimizer of every training run: AdamW, linear warm-up, cosine decay, clipping."""

from __future__ import annotations

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with warm-up + cosine decay to `final_fraction` x peak, global-norm clipping."""

  learning_rate: float = 3e-3
  warmup_steps: int = 100
  final_fraction: float = 0.1
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.98
  grad_clip: float = 1.0

  def __post_init__(self):
    checks = {"learning_rate": self.learning_rate > 0, "warmup_steps": self.warmup_steps >= 0,
              "final_fraction": 0 <= self.final_fraction <= 1, "weight_decay": self.weight_decay >= 0,
              "b1": 0 <= self.b1 < 1, "b2": 0 <= self.b2 < 1, "grad_clip": self.grad_clip > 0}
    rules = {"learning_rate": "> 0", "warmup_steps": ">= 0", "final_fraction": "in [0, 1]", "weight_decay": ">= 0",
             "b1": "in [0, 1)", "b2": "in [0, 1)", "grad_clip": "> 0"}
    for name, ok in checks.items():
      if not ok:
        raise ValueError(f"OptimConfig.{name} must be {rules[name]}, got {getattr(self, name)!r}")


def check_positive_ints(config, names, allow_zero=()) -> None:
  """Raises ValueError naming the first field of `config` that is not an int >= 1 (>= 0 for
  the names in `allow_zero`)."""
  for name in names:
    v = getattr(config, name)
    low = 0 if name in allow_zero else 1
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
      raise ValueError(f"{type(config).__name__}.{name} must be an int >= {low}, got {v!r}")


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=min(cfg.warmup_steps, total_steps - 1),
      decay_steps=total_steps, end_value=cfg.learning_rate * cfg.final_fraction)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
