"""Tasks by name."""

from __future__ import annotations

from tts_jax.tasks.countdown import Countdown
from tts_jax.tasks.modchain import ModChain

TASKS = {"modchain": ModChain, "countdown": Countdown}


def get_task(name: str, **knobs):
  """A task by name ("modchain", "countdown"), with optional difficulty knobs."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
  return TASKS[name](**knobs)
