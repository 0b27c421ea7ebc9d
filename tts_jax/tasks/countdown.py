"""Countdown: reach a target from a few small numbers with + - * / (exact division).

    prompt:    7 3 12 5 -> 41 :
    solution:  12 * 3 = 36 ; 36 + 5 = 41 ; answer 41

Each number may be used at most once; each step combines two available numbers
into their result (positive integers only: a - b needs a > b, a / b needs b to
divide a). The last step must produce the target. Splits: "val" and "test" (3-4
numbers), "hard" (4 numbers), "ood" (5 numbers).
"""

from __future__ import annotations

import dataclasses
import functools
import re

from tts_jax.tasks.base import ANSWER, STEP, SplitsMixin, problem_rng, split_steps, word_tokenizer

_OPS = ("+", "-", "*", "/")
_STEP_RE = re.compile(r"^(\d+) ([+\-*/]) (\d+) = (\d+)$")


def _combine(a: int, op: str, b: int) -> int | None:
  """a op b over positive integers, or None when not allowed."""
  if op == "+":
    return a + b
  if op == "*":
    return a * b
  if op == "-":
    return a - b if a > b else None
  return a // b if b > 1 and a % b == 0 else None


@functools.lru_cache(maxsize=200_000)
def reachable(pool: tuple[int, ...], target: int) -> bool:
  """Whether `target` is in `pool` or can be made from it (exhaustive search).

  pool: a sorted tuple of available positive integers, each usable at most once.
  """
  if target in pool:
    return True
  n = len(pool)
  for i in range(n):
    for j in range(n):
      if i == j:
        continue
      rest = [pool[k] for k in range(n) if k != i and k != j]
      for op in _OPS:
        if op in "+*" and i > j:
          continue  # commutative: try each pair once
        r = _combine(pool[i], op, pool[j])
        if r is not None and reachable(tuple(sorted(rest + [r])), target):
          return True
  return False


@dataclasses.dataclass(frozen=True)
class CountdownProblem:
  """numbers: the available numbers (in prompt order); target: the number to reach;
  steps: one solution ((a, op, b, result), ...) found by the generator (empty when the problem
  was parsed from its prompt)."""

  numbers: tuple[int, ...]
  target: int
  steps: tuple[tuple[int, str, int, int], ...]


@dataclasses.dataclass(frozen=True)
class Countdown(SplitsMixin):
  """The task; its fields are the difficulty knobs."""

  min_numbers: int = 3
  max_numbers: int = 4
  max_number: int = 12        # inputs are drawn from 1..max_number
  max_value: int = 200        # numbers the vocabulary can write (0..max_value)
  min_target: int = 10
  max_target: int = 99
  split_sizes: tuple[tuple[str, int], ...] = (("val", 200), ("test", 500), ("hard", 500), ("ood", 500))
  name: str = "countdown"

  @property
  def words(self) -> tuple[str, ...]:
    return (*(str(i) for i in range(self.max_value + 1)), *_OPS, "=", "->", ":", STEP, ANSWER)

  def tokenizer(self):
    return word_tokenizer(self.words)

  def _count_range(self, split: str) -> tuple[int, int]:
    if split == "hard":
      return self.max_numbers, self.max_numbers
    if split == "ood":
      return self.max_numbers + 1, self.max_numbers + 1
    return self.min_numbers, self.max_numbers

  def generate(self, seed: int, index: int, split: str = "train") -> CountdownProblem:
    """Problem `index` of stream (`seed`, `split`): a random valid computation over
    all the numbers whose result is in [min_target, max_target]; pure in its arguments."""
    rng = problem_rng(seed, split, index)
    lo, hi = self._count_range(split)
    n = int(rng.integers(lo, hi + 1))
    while True:
      numbers = [int(x) for x in rng.integers(1, self.max_number + 1, size=n)]
      pool, steps = list(numbers), []
      while len(pool) > 1:
        i, j = (int(x) for x in rng.choice(len(pool), size=2, replace=False))
        a, b = pool[i], pool[j]
        if a < b:
          a, b = b, a
        op = _OPS[int(rng.integers(0, 4))]
        r = _combine(a, op, b)
        if r is None or r > self.max_value:
          break
        pool = [x for k, x in enumerate(pool) if k not in (i, j)] + [r]
        steps.append((a, op, b, r))
      if (len(pool) == 1 and self.min_target <= pool[0] <= self.max_target
          and pool[0] not in numbers):
        return CountdownProblem(numbers=tuple(numbers), target=pool[0], steps=tuple(steps))

  def prompt(self, problem: CountdownProblem) -> str:
    return f"{' '.join(map(str, problem.numbers))} -> {problem.target} :"

  def parse_prompt(self, text: str) -> CountdownProblem:
    """The problem a prompt states (the inverse of `prompt`; `steps` is empty: the generator's
    own solution is not part of the prompt). Raises ValueError on a malformed prompt."""
    m = re.fullmatch(r"((?:\d+ )+)-> (\d+) :", text.strip())
    if m is None:
      raise ValueError(f"not a countdown prompt ('a b c -> target :'): {text!r}")
    return CountdownProblem(numbers=tuple(int(x) for x in m.group(1).split()), target=int(m.group(2)), steps=())

  def solution(self, problem: CountdownProblem) -> str:
    steps = [f"{a} {op} {b} = {r} {STEP}" for a, op, b, r in problem.steps]
    return " ".join(steps + [f"{ANSWER} {problem.target}"])

  # -- verifiers ---------------------------------------------------------------
  def extract_answer(self, text: str) -> str | None:
    _, line = split_steps(text)
    if line is None:
      return None
    parts = line.split()
    return parts[1] if len(parts) == 2 and parts[1].isdigit() else None

  def _replay(self, problem: CountdownProblem, steps: list[str]):
    """Yields (step valid, pool after it, result) for each step; stops after an invalid one."""
    pool = list(problem.numbers)
    for s in steps:
      m = _STEP_RE.match(s)
      ok = m is not None
      if ok:
        a, op, b, r = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        ok = _combine(a, op, b) == r
        if ok:
          rest = list(pool)
          for x in (a, b):
            if x in rest:
              rest.remove(x)
            else:
              ok = False
          if ok:
            pool = rest + [r]
      yield ok, pool, (r if ok else None)
      if not ok:
        return

  def verify(self, problem: CountdownProblem, text: str) -> bool:
    """Exact outcome verifier: valid steps whose last result is the target, and the
    answer line states the target."""
    steps, _ = split_steps(text)
    if not steps or self.extract_answer(text) != str(problem.target):
      return False
    replay = list(self._replay(problem, steps))
    return len(replay) == len(steps) and all(ok for ok, _, _ in replay) and replay[-1][2] == problem.target

  def step_labels(self, problem: CountdownProblem, text: str) -> list[bool]:
    """Exact oracle process verifier: for each step, whether all steps so far are valid and
    the remaining numbers can still reach the target."""
    steps, _ = split_steps(text)
    labels = []
    for ok, pool, _ in self._replay(problem, steps):
      labels.append(ok and reachable(tuple(sorted(pool)), problem.target))
      if not labels[-1]:
        break
    return labels + [False] * (len(steps) - len(labels))
