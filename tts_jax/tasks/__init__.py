"""Synthetic reasoning tasks with exact verifiers, their shipped default models, rollouts,
and their exact step checkers as potentials."""

from tts_jax.tasks.base import (ANSWER, EOS, PAD, STEP, TaskTokens, completion_text, prompt_ids, split_steps,
                                task_tokens, word_tokenizer)
from tts_jax.tasks.countdown import Countdown, CountdownProblem, reachable
from tts_jax.tasks.modchain import ModChain, ModChainProblem
from tts_jax.tasks.oracle import TaskChecker, prefix_correct, step_oracle
from tts_jax.tasks.registry import TASKS, get_task
from tts_jax.tasks.rollout import Completions, complete, grade, task_prompts
from tts_jax.tasks.shipped import DefaultModels, HFModels, available_defaults, load_default, load_models

__all__ = ["ANSWER", "EOS", "PAD", "STEP", "TaskTokens", "task_tokens", "completion_text", "prompt_ids", "split_steps", "word_tokenizer",
           "Countdown", "CountdownProblem", "reachable", "ModChain", "ModChainProblem", "TaskChecker",
           "prefix_correct", "step_oracle", "TASKS", "get_task", "Completions", "complete", "grade", "task_prompts",
           "DefaultModels", "HFModels", "available_defaults", "load_default", "load_models"]
