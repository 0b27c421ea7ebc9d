"""A math benchmark as an experiment task: problems from a file, prompts by the policy's chat
template, answers graded by math-verify, steps at blank lines.

    MathTask(data_path="MATH-500/test.jsonl", tokenizer_path="Qwen2.5-Math-1.5B-Instruct", prompt_style="qwen")
"""

from __future__ import annotations

import dataclasses
import functools
import re

from tts_jax.models.tokenizer import Tokenizer
from tts_jax.tasks.base import TaskTokens
from tts_jax.tasks.math.answers import extract_answer, math_equal
from tts_jax.tasks.math.data import MathProblem, read_problems
from tts_jax.tasks.math.prompts import chat_prompt, math_messages
from tts_jax.tasks.math.steps import step_delimiter_ids


@dataclasses.dataclass(frozen=True)
class MathTask:
  """data_path: a MATH-500 / GSM8K / AIME file (`read_problems`); its every split is the
  whole file. tokenizer_path: the policy's directory (its tokenizer and chat template).
  prompt_style: the conversation (`math_messages`) and the fallback template ("qwen",
  "llama", "plain"). step_separator: the text that ends a reasoning step."""

  data_path: str
  tokenizer_path: str
  prompt_style: str = "qwen"
  step_separator: str = "\n\n"
  name: str = "math"

  @functools.lru_cache(maxsize=None)
  def tokenizer(self) -> Tokenizer:
    return Tokenizer.from_directory(self.tokenizer_path)

  @functools.lru_cache(maxsize=None)
  def split(self, name: str = "test") -> tuple[MathProblem, ...]:
    """Every problem of the file (a benchmark file is one split; `name` is not used)."""
    del name
    return tuple(read_problems(self.data_path))

  def prompt(self, problem: MathProblem) -> str:
    return chat_prompt(self.tokenizer(), math_messages(problem.problem, self.prompt_style), self.prompt_style,
                       tokenize=False)

  def prompt_ids(self, problem: MathProblem) -> list[int]:
    return chat_prompt(self.tokenizer(), math_messages(problem.problem, self.prompt_style), self.prompt_style)

  def problem_of_prompt(self, ids) -> MathProblem:
    """The problem whose prompt (`prompt_ids`) is `ids`: looked up among the file's problems."""
    found = self._problems_by_prompt().get(tuple(int(i) for i in ids))
    if found is None:
      raise ValueError(f"a prompt of {len(ids)} ids is none of the prompts of the problems in {self.data_path}: "
                       f"a step-tag PRM reads the problem's text, so prompts must come from the task's problems")
    return found

  @functools.lru_cache(maxsize=None)
  def _problems_by_prompt(self) -> dict[tuple[int, ...], MathProblem]:
    return {tuple(self.prompt_ids(p)): p for p in self.split()}

  @functools.lru_cache(maxsize=None)
  def token_ids(self) -> TaskTokens:
    tok = self.tokenizer()
    if not tok.eos_token_ids:
      raise ValueError(f"the tokenizer at {self.tokenizer_path} names no eos token: generations could not stop")
    return TaskTokens(stop=tok.eos_token_ids, pad=tok.pad_token_id, steps=step_delimiter_ids(tok, self.step_separator))

  def extract_answer(self, text: str) -> str | None:
    """The final answer, lightly normalised so that equal spellings vote together (spaces,
    \\left/\\right, \\dfrac/\\tfrac, a trailing period, surrounding $)."""
    a = extract_answer(text)
    if a is None:
      return None
    a = re.sub(r"\\(left|right)(?=[()\[\]|.])", "", a)
    a = re.sub(r"\\[dt]frac", r"\\frac", a).replace(" ", "").strip("$").rstrip(".")
    return a or None

  def verify(self, problem: MathProblem, text: str) -> bool:
    return math_equal(problem.answer, text)
