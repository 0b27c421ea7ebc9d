"""How a process reward model reads a solution: its own prompt and the steps joined by a
step tag, the score read at each tag (the format the PRM was trained on).

    fmt = StepTagFormat.qwen_math_prm()           # "<extra_0>" after each step, chat template
    prompt_ids, ids = fmt.encode(prm_tokenizer, problem_text, completion_text)

Qwen2.5-Math-PRM: system prompt + problem as the user turn, the assistant turn is the steps
(split at blank lines) each followed by "<extra_0>". Math-Shepherd: "problem step1 ки\\nstep2 ки\\n"
without a chat template. RLHFlow's PRMs (`ChatTurnFormat`): a conversation in the PRM's chat
template whose user turns are the steps (the first one "problem step1") and whose assistant
turns are "+"; a step's score is read at the token before its "+". The policy's completion
text is re-tokenized by the PRM's own tokenizer, so the PRM need not share the policy's
vocabulary in pool scoring.

A format has `prompt_ids(tokenizer, problem)` (read once per problem),
`completion_ids(tokenizer, completion, problem)` and `read_mask(tokenizer, ids)` (where in
the completion ids the steps' scores are read).
"""

from __future__ import annotations

import dataclasses
import functools

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

  def completion_ids(self, tokenizer, completion: str, problem: str = "") -> list[int]:
    """The completion's steps (split at `separator`, stripped) each followed by the tag and
    joined by `joiner` (an empty completion is one empty step): the last id is a tag."""
    return tokenizer.encode(self.joiner.join(s + self.tag for s in split_steps(completion, self.separator)),
                            add_special_tokens=False)

  def read_mask(self, tokenizer, ids) -> list[bool]:
    """Where the steps' scores are read: at every tag."""
    tag = _tag_id(self, tokenizer)
    return [int(i) == tag for i in ids]

  def encode(self, tokenizer, problem: str, completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids): `prompt_ids` and `completion_ids`."""
    return self.prompt_ids(tokenizer, problem), self.completion_ids(tokenizer, completion, problem)


def max_ids(fmt, tokenizer, num_tokens: int, max_steps: int) -> int:
  """A bound on the ids `fmt.completion_ids` takes for a completion of `num_tokens` policy
  tokens in at most `max_steps` steps: its text re-tokenized (taken as at most as many ids),
  and what each step adds around its text (measured on the PRM's tokenizer), plus slack."""
  return num_tokens + min(num_tokens + 1, max_steps) * _step_overhead(fmt, tokenizer) + 16


@functools.lru_cache(maxsize=64)
def _step_overhead(fmt, tokenizer) -> int:
  """Ids a step adds beyond its text (a tag, a joiner, a turn pair), plus 2 for merges."""
  one = len(fmt.completion_ids(tokenizer, "x", "y"))
  two = len(fmt.completion_ids(tokenizer, "x" + fmt.separator + "x", "y"))
  return max(two - one - len(tokenizer.encode("x", add_special_tokens=False)), 0) + 2


@functools.lru_cache(maxsize=64)
def _tag_id(fmt: StepTagFormat, tokenizer) -> int:
  """`fmt.tag_id(tokenizer)`, once per (format, tokenizer): the engines ask for every particle and step."""
  return fmt.tag_id(tokenizer)


def split_steps(completion: str, separator: str) -> list[str]:
  """The steps of a completion: split at `separator`, stripped, empty ones dropped (an empty
  completion is one empty step)."""
  steps = [s.strip() for s in completion.split(separator)]
  return [s for s in steps if s] or [""]


_SENTINEL = "\u2063step\u2063"  # text no step contains: marks where the first step starts


@dataclasses.dataclass(frozen=True)
class ChatTurnFormat:
  """RLHFlow's PRMs (e.g. Llama3.1-8B-PRM-Deepseek-Data, the PRM of Hugging Face's
  search-and-learn): a conversation in the PRM tokenizer's chat template, user turns the
  steps (the first "problem step1"), assistant turns `good` ("+"); a step's score is the
  PRM's p(good) against p(bad) predicted at the last token before its `good`, i.e. at the
  end of the assistant header (a "tokens" head, `tts_jax.models.reward`).

  The prompt read once is the conversation up to the problem's end; the rest, from " step1"
  on, is the completion (one text, so the boundary between problem and first step is where
  the PRM's pre-tokenizer splits anyway: before " step1"'s word)."""

  good: str = "+"
  separator: str = "\n\n"

  def _messages(self, problem: str, steps: list[str]) -> list[dict[str, str]]:
    out = []
    for k, step in enumerate(steps):
      out += [{"role": "user", "content": f"{problem} {step}" if k == 0 else step},
              {"role": "assistant", "content": self.good}]
    return out

  def _render(self, tokenizer, messages, generation: bool = False) -> str:
    if tokenizer.chat_template is None:
      raise ValueError("the PRM's tokenizer has no chat template; a chat-turn PRM format reads its conversation")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)

  def _prompt_text(self, tokenizer, problem: str) -> str:
    return _chat_prompt_text(self, tokenizer, problem)

  def prompt_ids(self, tokenizer, problem: str) -> list[int]:
    return tokenizer.encode(self._prompt_text(tokenizer, problem), add_special_tokens=False)

  def completion_ids(self, tokenizer, completion: str, problem: str = "") -> list[int]:
    """The conversation after the problem: " step1", then each step's turns, each assistant
    turn `good`."""
    prefix = self._prompt_text(tokenizer, problem)
    text = self._render(tokenizer, self._messages(problem, split_steps(completion, self.separator)))
    if not text.startswith(prefix):
      raise ValueError("the PRM's chat template renders the problem differently with other steps after it")
    return tokenizer.encode(text[len(prefix):], add_special_tokens=False)

  def encode(self, tokenizer, problem: str, completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids): `prompt_ids` and `completion_ids`."""
    return self.prompt_ids(tokenizer, problem), self.completion_ids(tokenizer, completion, problem)

  def read_mask(self, tokenizer, ids) -> list[bool]:
    """Where the steps' scores are read: the last id of every assistant header followed by `good`."""
    header, good = _chat_header_and_good(self, tokenizer)
    ids, h = [int(i) for i in ids], len(header)
    return [i + 1 < len(ids) and ids[i + 1] == good and i + 1 >= h and ids[i + 1 - h:i + 1] == header
            for i in range(len(ids))]


# Per (format, tokenizer[, problem]) once, not per particle and step (the engines call back often).
@functools.lru_cache(maxsize=4096)
def _chat_prompt_text(fmt: ChatTurnFormat, tokenizer, problem: str) -> str:
  text = fmt._render(tokenizer, fmt._messages(problem, [_SENTINEL]))
  return text[:text.index(_SENTINEL) - 1]  # up to the problem's end, before the space


@functools.lru_cache(maxsize=64)
def _chat_header_and_good(fmt: ChatTurnFormat, tokenizer) -> tuple[list[int], int]:
  """(ids of the template's assistant header, what a generation prompt appends; the id of `good`)."""
  good = tokenizer.encode(fmt.good, add_special_tokens=False)
  if len(good) != 1:
    raise ValueError(f"the PRM's good token {fmt.good!r} is {len(good)} tokens; it must be one")
  turn = [{"role": "user", "content": "x"}]
  with_header, without = fmt._render(tokenizer, turn, True), fmt._render(tokenizer, turn)
  if not with_header.startswith(without) or with_header == without:
    raise ValueError("the PRM's chat template has no assistant header to read the steps' scores after")
  return tokenizer.encode(with_header[len(without):], add_special_tokens=False), good[0]


@dataclasses.dataclass(frozen=True)
class StepTagReader:
  """The host side of `tts_jax.verifiers.StepTagPotential` for a math task: turns the
  policy's token ids into what a step-tag PRM reads (`fmt`, with the PRM's `tokenizer`).

  prompt(policy prompt ids): the PRM's prompt for the problem those ids state (the task's
  own problems, looked up exactly). completion(policy prompt ids, completion ids, done): the
  text's steps laid out as the format says, and where their scores are read; a particle
  that is not done and whose last token ends a step (contains the separator) is read up to
  that separator, so text a merged token carries past it (".\n\nThe") waits for its own
  step."""

  task: object
  fmt: object  # StepTagFormat or ChatTurnFormat
  tokenizer: object

  def prompt(self, policy_prompt_ids) -> list[int]:
    return self.fmt.prompt_ids(self.tokenizer, self._problem(policy_prompt_ids))

  def _problem(self, policy_prompt_ids) -> str:
    return self.task.problem_of_prompt(policy_prompt_ids).problem

  def max_ids(self, num_tokens: int, max_steps: int) -> int:
    """A bound on the PRM ids of a completion of `num_tokens` policy tokens in at most
    `max_steps` steps (`max_ids`)."""
    return max_ids(self.fmt, self.tokenizer, num_tokens, max_steps)

  def prompt_margin(self) -> int:
    """How many more ids the PRM's prompt may take than the policy's (a static width): the
    difference of the two templates around an empty problem, plus slack for the merges at
    the problem's edges."""
    blank = dataclasses.replace(self.task.split()[0], problem="")
    return max(len(self.fmt.prompt_ids(self.tokenizer, "")) - len(self.task.prompt_ids(blank)), 0) + 16

  def completion(self, policy_prompt_ids, ids, done: bool) -> tuple[list[int], list[bool]]:
    """(PRM ids, where its step scores are read) of a particle's completion `ids`."""
    text = completion_text(self.task, ids)
    sep = self.fmt.separator
    if not done and len(ids) and sep in self.task.tokenizer().decode([int(ids[-1])], skip_special_tokens=False):
      text = text[:text.rfind(sep) + len(sep)]
    out = self.fmt.completion_ids(self.tokenizer, text, self._problem(policy_prompt_ids))
    return out, self.fmt.read_mask(self.tokenizer, out)

