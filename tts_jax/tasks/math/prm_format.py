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

  def encode(self, tokenizer, problem: str, completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids): the completion's steps each followed by the tag (an empty
    completion is one empty step)."""
    if self.chat:
      prompt = chat_prompt(tokenizer, [{"role": "system", "content": self.system}, {"role": "user", "content": problem}])
    else:
      prompt = tokenizer.encode(problem + self.question_suffix, add_special_tokens=False)
    steps = [s.strip() for s in completion.split(self.separator)]
    steps = [s for s in steps if s] or [""]
    text = self.joiner.join(s + self.tag for s in steps)  # ends with the tag: the last step's score
    return list(prompt), tokenizer.encode(text, add_special_tokens=False)
