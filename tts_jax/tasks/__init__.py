"""Synthetic reasoning tasks with exact verifiers, and their shipped default models."""

from tts_jax.tasks.base import ANSWER, EOS, PAD, STEP, split_steps, word_tokenizer
from tts_jax.tasks.countdown import Countdown, CountdownProblem, reachable
from tts_jax.tasks.modchain import ModChain, ModChainProblem

TASKS = {"modchain": ModChain, "countdown": Countdown}


def get_task(name: str, **knobs):
  """A task by name ("modchain", "countdown"), with optional difficulty knobs."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
  return TASKS[name](**knobs)


__all__ = ["ANSWER", "EOS", "PAD", "STEP", "split_steps", "word_tokenizer", "Countdown", "CountdownProblem",
           "reachable", "ModChain", "ModChainProblem", "TASKS", "get_task"]
