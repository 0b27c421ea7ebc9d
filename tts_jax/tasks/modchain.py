"""Modular arithmetic chains over Z_p (a small iGSM).

A problem is a random DAG of assignments over Z_p (p = 23 by default) with +, -
and *, listed in a dependency-respecting order with distractor assignments mixed
in, and one query variable that depends on K of them:

    prompt:    g = 7 + 2 , k = 5 * 3 , b = g * 4 , q = k - 9 , x = b - g , ? x :
    solution:  g = 7 + 2 = 9 ; b = 9 * 4 = 13 ; x = 13 - 9 = 4 ; answer 4

Each step computes one needed variable, writing its operands' values. The answer
has p possible values, so wrong answers collide and majority voting is non-trivial.
Splits: "train" (a stream), "val", "test" (K in [min_ops, max_ops]), "hard"
(K = max_ops - 1 .. max_ops), "ood" (K = max_ops + 1 .. max_ops + 3).
"""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Sequence

from tts_jax.tasks.base import ANSWER, EOS, STEP, SplitsMixin, problem_rng, split_steps, word_tokenizer

_OPS = ("+", "-", "*")
_STEP_RE = re.compile(r"^([a-z]) = (\d+) ([+\-*]) (\d+) = (\d+)$")


@dataclasses.dataclass(frozen=True)
class ModChainProblem:
  """assignments: ((var, lhs, op, rhs), ...) in listing order; lhs/rhs are variable names
  or decimal constants. query: the asked variable. needed: the query's ancestors in
  listing order (the solution's steps). answer: the query's value."""

  assignments: tuple[tuple[str, str, str, str], ...]
  query: str
  needed: tuple[str, ...]
  answer: int


@dataclasses.dataclass(frozen=True)
class ModChain(SplitsMixin):
  """The task; its fields are the difficulty knobs."""

  modulus: int = 23
  min_ops: int = 2
  max_ops: int = 6
  max_distractors: int = 2
  split_sizes: tuple[tuple[str, int], ...] = (("val", 200), ("test", 500), ("hard", 500), ("ood", 500))
  name: str = "modchain"

  # -- vocabulary --------------------------------------------------------------
  @property
  def words(self) -> tuple[str, ...]:
    return (*(str(i) for i in range(self.modulus)), *string.ascii_lowercase, *_OPS, "=", ",", "?", ":",
            STEP, ANSWER)

  def tokenizer(self):
    return word_tokenizer(self.words)

  # -- generation --------------------------------------------------------------
  def _ops_range(self, split: str) -> tuple[int, int]:
    if split == "hard":
      return max(self.min_ops, self.max_ops - 1), self.max_ops
    if split == "ood":
      return self.max_ops + 1, self.max_ops + 3
    return self.min_ops, self.max_ops

  def generate(self, seed: int, index: int, split: str = "train") -> ModChainProblem:
    """Problem `index` of stream (`seed`, `split`); pure in its arguments."""
    rng = problem_rng(seed, split, index)
    lo, hi = self._ops_range(split)
    k = int(rng.integers(lo, hi + 1))
    d = int(rng.integers(0, self.max_distractors + 1))
    names = [str(c) for c in rng.permutation(list(string.ascii_lowercase))[:k + d]]
    p = self.modulus

    def const():
      return str(int(rng.integers(0, p)))

    # The needed chain: v_i uses v_{i-1}, its other operand a constant or an earlier v.
    chain = []
    for i in range(k):
      if i == 0:
        lhs, rhs = const(), const()
      else:
        other = names[int(rng.integers(0, i - 1))] if i >= 2 and rng.random() < 0.3 else const()
        lhs, rhs = (names[i - 1], other) if rng.random() < 0.5 else (other, names[i - 1])
      chain.append((names[i], lhs, _OPS[int(rng.integers(0, 3))], rhs))
    # Distractors read constants and needed variables but nothing needed reads them;
    # each is listed after the variables it reads.
    listing = list(chain)
    for j in range(d):
      pos = int(rng.integers(0, len(listing) + 1))
      defined = [a[0] for a in listing[:pos] if a[0] in names[:k]]
      operand = lambda: defined[int(rng.integers(0, len(defined)))] if defined and rng.random() < 0.5 else const()
      listing.insert(pos, (names[k + j], operand(), _OPS[int(rng.integers(0, 3))], operand()))
    values = self.values(listing)
    query = names[k - 1]
    return ModChainProblem(assignments=tuple(listing), query=query, needed=tuple(names[:k]),
                           answer=values[query])

  def values(self, assignments) -> dict[str, int]:
    """Every variable's value, evaluating assignments in listing order."""
    vals: dict[str, int] = {}
    for var, lhs, op, rhs in assignments:
      vals[var] = self.apply(self._operand(lhs, vals), op, self._operand(rhs, vals))
    return vals

  @staticmethod
  def _operand(x: str, vals: dict[str, int]) -> int:
    return int(x) if x.isdigit() else vals[x]

  def apply(self, a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op] % self.modulus

  # -- text --------------------------------------------------------------------
  def prompt(self, problem: ModChainProblem) -> str:
    body = " , ".join(f"{v} = {l} {o} {r}" for v, l, o, r in problem.assignments)
    return f"{body} , ? {problem.query} :"

  def parse_prompt(self, text: str) -> ModChainProblem:
    """The problem a prompt states (the inverse of `prompt`): assignments and query as listed;
    `needed` and `answer` recomputed from them. Raises ValueError on a malformed prompt."""
    body, sep, tail = text.rpartition(" , ? ")
    query = tail.removesuffix(" :").strip()
    assignments = []
    for part in body.split(" , ") if sep else ():
      m = re.fullmatch(r"([a-z]) = (\w+) ([+\-*]) (\w+)", part.strip())
      if m is None:
        raise ValueError(f"not a modchain assignment: {part!r} in prompt {text!r}")
      assignments.append(m.groups())
    defs = {a[0]: a for a in assignments}
    if not sep or query not in defs:
      raise ValueError(f"not a modchain prompt (no '? var :' query over its assignments): {text!r}")
    needed, stack = set(), [query]
    while stack:  # the query's ancestors
      var = stack.pop()
      if var in defs and var not in needed:
        needed.add(var)
        stack += [x for x in defs[var][1::2] if not x.isdigit()]
    return ModChainProblem(assignments=tuple(assignments), query=query,
                           needed=tuple(a[0] for a in assignments if a[0] in needed),
                           answer=self.values(assignments)[query])

  def solution(self, problem: ModChainProblem) -> str:
    vals = self.values(problem.assignments)
    defs = {a[0]: a for a in problem.assignments}
    steps = []
    for var in problem.needed:
      _, lhs, op, rhs = defs[var]
      steps.append(f"{var} = {self._operand(lhs, vals)} {op} {self._operand(rhs, vals)} = {vals[var]} {STEP}")
    return " ".join(steps + [f"{ANSWER} {problem.answer}"])

  def wrong_solution(self, problem: ModChainProblem, rng) -> str:
    """A solution with one plausible error, carried through as the policy carries its own: in
    a random step an operand value (4 times in 5: the policy's commonest first error) or the
    operator (1 in 5) is wrong, that step's result is computed from what it wrote, and every
    later step reads the wrong values. Hard negatives for verifier training (they differ from
    `solution` from one token on). rng: a numpy Generator."""
    defs = {a[0]: a for a in problem.assignments}
    at = int(rng.integers(0, len(problem.needed)))
    written = self.values(problem.assignments)  # the values the wrong solution believes, from `at` on
    steps = []
    for i, var in enumerate(problem.needed):
      _, lhs, op, rhs = defs[var]
      a, b = self._operand(lhs, written), self._operand(rhs, written)
      if i == at:
        if rng.random() < 0.8:
          shift = int(rng.integers(1, self.modulus))
          a, b = ((a + shift) % self.modulus, b) if rng.random() < 0.5 else (a, (b + shift) % self.modulus)
        else:
          op = [o for o in _OPS if o != op][int(rng.integers(0, 2))]
      written[var] = self.apply(a, op, b)
      steps.append(f"{var} = {a} {op} {b} = {written[var]} {STEP}")
    return " ".join(steps + [f"{ANSWER} {written[problem.query]}"])

  # -- verifiers ---------------------------------------------------------------
  def extract_answer(self, text: str) -> str | None:
    """The stated answer ("0".."p-1") or None when there is no well-formed answer line."""
    _, line = split_steps(text)
    if line is None:
      return None
    parts = line.split()
    if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= self.modulus:
      return None
    return parts[1]

  def verify(self, problem: ModChainProblem, text: str) -> bool:
    """Exact outcome verifier: the stated answer equals the query's value."""
    return self.extract_answer(text) == str(problem.answer)

  def step_correct(self, problem: ModChainProblem, step: str) -> bool:
    """One step is right: a problem variable, its definition's operand values, op and result."""
    m = _STEP_RE.match(step)
    if m is None:
      return False
    var, a, op, b, r = m.groups()
    defs = {x[0]: x for x in problem.assignments}
    if var not in defs:
      return False
    vals = self.values(problem.assignments)
    _, lhs, dop, rhs = defs[var]
    return (op == dop and int(a) == self._operand(lhs, vals) and int(b) == self._operand(rhs, vals)
            and int(r) == vals[var])

  def step_labels(self, problem: ModChainProblem, text: str) -> list[bool]:
    """Exact oracle process verifier: for each step, whether every step up to it is right
    (a prefix of right steps can always be completed to the right answer)."""
    steps, _ = split_steps(text)
    labels, ok = [], True
    for s in steps:
      ok = ok and self.step_correct(problem, s)
      labels.append(ok)
    return labels

  def right_so_far(self, prompt_tokens, prompt_lengths, tokens, lengths, done):
    """`tts_jax.tasks.oracle.prefix_correct` as array code over ids (bool[B, N]; jittable):
    see `tts_jax.tasks.modchain_checker.right_so_far`."""
    from tts_jax.tasks.modchain_checker import right_so_far  # noqa: PLC0415
    return right_so_far(self, prompt_tokens, prompt_lengths, tokens, lengths, done)

  def token_labels(self, problem: ModChainProblem, words: Sequence[str]) -> list[bool]:
    """Exact process labels per token of a completion (`words`: its tokens as strings, EOS
    included): whether the text up to and including each token can still be completed to a
    right solution. Finished steps must be right (as `step_correct`), the current step's tokens
    so far must agree with a right step (variable, operand values, operator, result), the
    answer must be the query's value; at EOS: every step and the answer right. At a step's ";"
    this equals `step_labels`."""
    defs, vals = {a[0]: a for a in problem.assignments}, self.values(problem.assignments)
    labels, ok, at, var, answer = [], True, 0, None, False
    for w in words:
      if w == EOS:
        ok = ok and answer is True
      elif answer is not False:  # after "answer": the value, then nothing else
        ok = ok and answer is None and w == str(problem.answer)
        answer = True if answer is None else "extra"
      elif w == ANSWER:
        ok, answer = ok and at == 0, None
      elif w == STEP:
        ok, at = ok and at == 7, 0
      else:
        if at == 0:
          var = defs.get(w)
          ok = ok and var is not None
        elif ok:
          _, lhs, op, rhs = var
          want = {1: "=", 2: str(self._operand(lhs, vals)), 3: op, 4: str(self._operand(rhs, vals)), 5: "=",
                  6: str(vals[var[0]])}
          ok = w == want.get(at)
        at += 1
      labels.append(ok)
    return labels
