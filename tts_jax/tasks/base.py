"""What every synthetic task provides: problems, a tokenizer, exact verifiers.

A task is a frozen dataclass (its difficulty knobs are fields) implementing:

- `generate(seed, index)`: the problem number `index` of the stream `seed`
  (pure: the same arguments always give the same problem);
- `split(name)`: a fixed held-out list of problems ("test", "hard", "ood", "val");
- `prompt(problem)` / `solution(problem)`: text; a solution is steps separated by
  the task's step delimiter, then the answer line;
- `extract_answer(text)`: the answer a completion states, or None;
- `verify(problem, text)`: exact outcome verifier (True iff fully correct);
- `step_labels(problem, text)`: exact oracle process verifier: for each step,
  whether the solution prefix ending at it can still reach a correct answer.

Texts are whitespace-separated words of the task's vocabulary; `tokenizer()`
gives a `tts_jax.models.tokenizer.Tokenizer` (a `tokenizers` WordLevel model),
the same interface as a real model's.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import models, pre_tokenizers

from tts_jax.models.tokenizer import Tokenizer

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
STEP = ";"  # step delimiter of every synthetic task
ANSWER = "answer"
SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "hard": 3, "ood": 4}


def problem_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of problem `index` of stream (`seed`, `split`): pure in its arguments."""
  return np.random.default_rng([seed, SPLIT_IDS[split], index])


@functools.lru_cache(maxsize=None)
def word_tokenizer(words: tuple[str, ...]) -> Tokenizer:
  """A WordLevel tokenizer over SPECIAL_TOKENS + `words`, whitespace pre-tokenized."""
  vocab = {w: i for i, w in enumerate(SPECIAL_TOKENS + tuple(w for w in words if w not in SPECIAL_TOKENS))}
  backend = _HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
  backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  backend.add_special_tokens(list(SPECIAL_TOKENS))
  backend.decoder = None
  return Tokenizer(backend, {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK})


def split_steps(text: str) -> tuple[list[str], str | None]:
  """Completion text -> (step strings, answer line or None).

  Steps are the `;`-terminated segments before the answer line; the answer line is
  the text after the last `;` if it starts with "answer".
  """
  parts = text.split(STEP)
  steps = [p.strip() for p in parts[:-1]]
  tail = parts[-1].strip()
  return steps, (tail if tail.startswith(ANSWER) else None)


def fingerprint(text: str) -> str:
  return hashlib.sha1(text.encode()).hexdigest()


class SplitsMixin:
  """Held-out splits and a training stream that never repeats them.

  The task (a frozen dataclass) provides `split_sizes` ((name, size), ...),
  `generate(seed, index, split)` and `prompt(problem)`.
  """

  @functools.lru_cache(maxsize=None)
  def split(self, name: str) -> tuple:
    """The fixed held-out split `name` (problems 0..size-1 of stream (0, name))."""
    sizes = dict(self.split_sizes)
    if name not in sizes:
      raise ValueError(f"unknown split {name!r}; available: {', '.join(sizes)}")
    return tuple(self.generate(0, i, name) for i in range(sizes[name]))

  @functools.cached_property
  def _held_out(self) -> frozenset[str]:
    return frozenset(fingerprint(self.prompt(p)) for name, _ in self.split_sizes for p in self.split(name))

  def train_problem(self, seed: int, index: int):
    """Training problem `index` of stream `seed`, never one of the held-out splits."""
    attempt = 0
    while True:
      p = self.generate(seed, index * 8 + attempt, "train")
      if fingerprint(self.prompt(p)) not in self._held_out:
        return p
      attempt += 1


@dataclasses.dataclass(frozen=True)
class TaskTokens:
  """The token ids a task's runs need: stop (end a generation), pad, steps (end a step)."""

  stop: tuple[int, ...]
  pad: int
  steps: tuple[int, ...]


def task_tokens(task) -> TaskTokens:
  """`task.token_ids()` when the task defines it (real tokenizers: `tts_jax.tasks.math`),
  else the synthetic tasks' <eos>, <pad> and ";"."""
  if hasattr(task, "token_ids"):
    return task.token_ids()
  tok = task.tokenizer()
  return TaskTokens(stop=(tok.token_to_id(EOS),), pad=tok.token_to_id(PAD), steps=(tok.token_to_id(STEP),))


def prompt_ids(task, problem) -> list[int]:
  """What a policy is conditioned on: `task.prompt_ids(problem)` when the task defines it
  (e.g. a chat template), else [BOS] + the prompt's token ids."""
  if hasattr(task, "prompt_ids"):
    return task.prompt_ids(problem)
  tok = task.tokenizer()
  return [tok.token_to_id(BOS)] + tok.encode(task.prompt(problem), add_special_tokens=False)


def example_ids(task, problem) -> tuple[list[int], int]:
  """A training example: ([BOS] prompt solution [EOS] ids, number of prompt ids incl. BOS)."""
  tok = task.tokenizer()
  p = prompt_ids(task, problem)
  s = tok.encode(task.solution(problem), add_special_tokens=False) + [tok.token_to_id(EOS)]
  return p + s, len(p)


def completion_text(task, ids) -> str:
  """Generated ids -> text, dropping special tokens (EOS, padding)."""
  return task.tokenizer().decode([int(i) for i in ids], skip_special_tokens=True)
