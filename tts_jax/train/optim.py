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


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=min(cfg.warmup_steps, total_steps - 1),
      decay_steps=total_steps, end_value=cfg.learning_rate * cfg.final_fraction)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
