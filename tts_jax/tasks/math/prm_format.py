"""How a process reward model reads a solution: its own prompt and the steps joined by a
step tag, the score read at each tag (the format the PRM was trained on).

    fmt = StepTagFormat.qwen_math_prm()           # "<extra_0>" after each step, chat template
    prompt_ids, ids = fmt.encode(prm_tokenizer, problem_text, completion_text)

Qwen2.5-Math-PRM: system prompt + problem as the user turn, the assistant turn is the steps
(split at blank lines) each followed by "<extra_0>". Math-Shepherd: "problem step1 ки\\nstep2 ки\\n"
without a chat template. The policy's completion text is re-tokenized by the PRM's own
tokenizer, so the PRM need not share the policy's vocabulary in pool scoring.
"""

from __future__ import annotations

import dataclasses

from tts_jax.tasks.base import completion_text
from tts_jax.tasks.math.prompts import QWEN_MATH_SYSTEM, chat_prompt


@dataclasses.dataclass(frozen=True)
class StepTagFormat:
  """tag: the token read after each step; joiner: text between a tag and the next step;
  separator: where the policy's text ends a step; chat: render the problem with the PRM's
  chat template (system prompt `system`), else the raw problem followed by `question_suffix`."""

  tag: str
  joiner: str = ""
  separator: str = "\n\n"
  chat: bool = True
  system: str = QWEN_MATH_SYSTEM
  question_suffix: str = " "

  @classmethod
  def qwen_math_prm(cls) -> "StepTagFormat":
    return cls(tag="<extra_0>")

  @classmethod
  def math_shepherd(cls) -> "StepTagFormat":
    return cls(tag=" ки", joiner="\n", chat=False)

  def tag_id(self, tokenizer) -> int:
    ids = tokenizer.encode(self.tag, add_special_tokens=False)
    if len(ids) != 1:
      raise ValueError(f"PRM step tag {self.tag!r} is {len(ids)} tokens in the PRM's tokenizer; it must be one")
    return ids[0]

  def prompt_ids(self, tokenizer, problem: str) -> list[int]:
    """The PRM's own prompt for `problem` (its chat template, or the raw problem)."""
    if self.chat:
      return list(chat_prompt(tokenizer, [{"role": "system", "content": self.system},
                                          {"role": "user", "content": problem}]))
    return tokenizer.encode(problem + self.question_suffix, add_special_tokens=False)

  def completion_ids(self, tokenizer, completion: str) -> list[int]:
    """The completion's steps (split at `separator`, stripped) each followed by the tag and
    joined by `joiner` (an empty completion is one empty step): the last id is a tag."""
    steps = [s.strip() for s in completion.split(self.separator)]
    steps = [s for s in steps if s] or [""]
    return tokenizer.encode(self.joiner.join(s + self.tag for s in steps), add_special_tokens=False)

  def encode(self, tokenizer, problem: str, completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids): `prompt_ids` and `completion_ids`."""
    return self.prompt_ids(tokenizer, problem), self.completion_ids(tokenizer, completion)


@dataclasses.dataclass(frozen=True)
class StepTagReader:
  """The host side of `tts_jax.verifiers.StepTagPotential` for a math task: turns the
  policy's token ids into what a step-tag PRM reads (`fmt`, with the PRM's `tokenizer`).

  prompt(policy prompt ids): the PRM's prompt for the problem those ids state (the task's
  own problems, looked up exactly). completion(policy completion ids, done): the text's
  steps re-tokenized, each followed by the tag; a particle that is not done and whose last
  token ends a step (contains the separator) is read up to that separator, so text a merged
  token carries past it (".\n\nThe") waits for its own step."""

  task: object
  fmt: StepTagFormat
  tokenizer: object

  def tag_id(self) -> int:
    return self.fmt.tag_id(self.tokenizer)

  def prompt(self, policy_prompt_ids) -> list[int]:
    return self.fmt.prompt_ids(self.tokenizer, self.task.problem_of_prompt(policy_prompt_ids).problem)

  def prompt_margin(self) -> int:
    """How many more ids the PRM's prompt may take than the policy's (a static width): the
    difference of the two templates around an empty problem, plus slack for the merges at
    the problem's edges."""
    blank = dataclasses.replace(self.task.split()[0], problem="")
    return max(len(self.fmt.prompt_ids(self.tokenizer, "")) - len(self.task.prompt_ids(blank)), 0) + 16

  def completion(self, ids, done: bool) -> list[int]:
    text = completion_text(self.task, ids)
    sep = self.fmt.separator
    if not done and len(ids) and sep in self.task.tokenizer().decode([int(ids[-1])], skip_special_tokens=False):
      text = text[:text.rfind(sep) + len(sep)]
    return self.fmt.completion_ids(self.tokenizer, text)

