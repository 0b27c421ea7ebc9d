"""Task generators, exact verifiers and oracle process verifiers."""

import re

import numpy as np
import pytest

from tts_jax.tasks import Countdown, ModChain, get_task, reachable
from tts_jax.tasks.base import example_ids, prompt_ids, split_steps

TASKS = [ModChain(), Countdown()]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_generator_is_pure_in_seed_and_index(task):
  a = [task.generate(7, i) for i in range(20)]
  b = [task.generate(7, i) for i in range(20)]
  c = [task.generate(8, i) for i in range(20)]
  assert a == b
  assert sum(x != y for x, y in zip(a, c)) >= 18
  assert task.split("test") == task.split("test")
  assert len(set(task.split("test"))) >= 0.95 * len(task.split("test"))


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_reference_solutions_verify_and_tokenize(task):
  tok = task.tokenizer()
  for split in ("train", "test", "hard", "ood"):
    probs = [task.train_problem(0, i) for i in range(50)] if split == "train" else task.split(split)[:50]
    for p in probs:
      sol = task.solution(p)
      assert task.verify(p, sol), (task.prompt(p), sol)
      steps, answer = split_steps(sol)
      assert all(task.step_labels(p, sol)) and len(task.step_labels(p, sol)) == len(steps)
      ids, n_prompt = example_ids(task, p)
      assert ids[:n_prompt] == prompt_ids(task, p)
      assert tok.token_to_id("<unk>") not in ids
      assert tok.decode(ids, skip_special_tokens=True) == task.prompt(p) + " " + sol


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_training_stream_excludes_held_out(task):
  held = {task.prompt(p) for s in ("val", "test", "hard", "ood") for p in task.split(s)}
  assert all(task.prompt(task.train_problem(3, i)) not in held for i in range(300))


def test_difficulty_knobs_and_splits():
  t = ModChain()
  needed = lambda s: [len(p.needed) for p in t.split(s)]
  assert min(needed("test")) == t.min_ops and max(needed("test")) == t.max_ops
  assert min(needed("hard")) >= t.max_ops - 1
  assert min(needed("ood")) > t.max_ops
  c = Countdown()
  assert {len(p.numbers) for p in c.split("hard")} == {c.max_numbers}
  assert {len(p.numbers) for p in c.split("ood")} == {c.max_numbers + 1}
  with pytest.raises(ValueError, match="unknown split 'nope'"):
    t.split("nope")
  with pytest.raises(ValueError, match="unknown task 'gsm8k'"):
    get_task("gsm8k")


# -- hand-written cases ---------------------------------------------------------

def modchain_problem():
  t = ModChain()
  # a = 7 + 2 (=9), d = 5 * 3 (distractor), b = a * 4 (=13), c = b - a (=4); query c
  from tts_jax.tasks.modchain import ModChainProblem
  p = ModChainProblem(assignments=(("a", "7", "+", "2"), ("d", "5", "*", "3"), ("b", "a", "*", "4"),
                                   ("c", "b", "-", "a")), query="c", needed=("a", "b", "c"), answer=4)
  return t, p


def test_modchain_verifiers_hand_written():
  t, p = modchain_problem()
  assert t.prompt(p) == "a = 7 + 2 , d = 5 * 3 , b = a * 4 , c = b - a , ? c :"
  good = "a = 7 + 2 = 9 ; b = 9 * 4 = 13 ; c = 13 - 9 = 4 ; answer 4"
  assert t.solution(p) == good
  assert t.verify(p, good) and t.step_labels(p, good) == [True, True, True]
  wrong = "a = 7 + 2 = 9 ; b = 9 * 4 = 12 ; c = 12 - 9 = 3 ; answer 3"
  assert not t.verify(p, wrong) and t.step_labels(p, wrong) == [True, False, False]
  assert t.extract_answer(wrong) == "3"
  # Right answer by luck after a wrong step: outcome True, process labels say where it broke.
  lucky = "a = 7 + 2 = 9 ; b = 9 * 5 = 22 ; answer 4"
  assert t.verify(p, lucky) and t.step_labels(p, lucky) == [True, False]
  wrong_operand = "a = 7 + 2 = 9 ; b = 8 * 4 = 9 ; c = 9 - 9 = 0 ; answer 0"
  assert t.step_labels(p, wrong_operand) == [True, False, False]
  for bad in ["", "answer", "answer 99", "answer x", "a = 7 + 2 = 9 ;", "a = 7 + 2 = 9 ; answer 4 4",
              "garbage ; ; answer", "z = 1 + 1 = 2 ; answer 4 extra"]:
    assert not t.verify(p, bad), bad
  assert t.step_labels(p, "") == []
  assert t.step_labels(p, "a = 7 + 2 9 ; answer 4") == [False]
  assert t.step_labels(p, "z = 1 + 1 = 2 ;") == [False]


def test_modchain_token_labels_flip_at_the_first_wrong_token():
  """Exact per-token process labels: true up to the first token no right solution has there
  (a wrong operand, operator, result, variable or answer), false from then on; at each ";"
  they equal step_labels, at EOS they say every step and the answer are right."""
  t, p = modchain_problem()
  words = lambda text: text.split() + ["<eos>"]
  good = t.solution(p)
  assert t.token_labels(p, words(good)) == [True] * len(words(good))
  cases = {"a = 7 + 2 = 9 ; b = 8 * 4 = 9 ; c = 9 - 9 = 0 ; answer 0": 10,  # operand 8, not a's 9
           "a = 7 + 2 = 9 ; b = 9 + 4 = 13 ; answer 4": 11,                 # operator
           "a = 7 + 2 = 9 ; b = 9 * 4 = 12 ; c = 12 - 9 = 3 ; answer 3": 14,  # result
           "z = 1 + 1 = 2 ; answer 4": 0,                                    # not a variable of the problem
           "a = 7 + 2 = 9 ; b = 9 * 4 = 13 ; c = 13 - 9 = 4 ; answer 5": 25,  # the answer
           "a = 7 + 2 = 9 ; b = 9 * 4 = 13 ; c = 13 - 9 = 4 ; answer 4 4": 26,  # a word after the answer
           "a = 7 + 2 9 ; answer 4": 5,                                      # a malformed step
           "a = 7 + 2 = 9 ; b = 9 * 4 = 13 ; c = 13 - 9 = 4 ;": 24}           # no answer: EOS is wrong
  for text, first_wrong in cases.items():
    labels = t.token_labels(p, words(text))
    assert labels == [i < first_wrong for i in range(len(labels))], (text, labels)
    at = [i for i, w in enumerate(words(text)) if w == ";"]
    assert [labels[i] for i in at] == t.step_labels(p, text), text
  lucky = "a = 7 + 2 = 9 ; b = 9 * 5 = 22 ; answer 4"  # right by luck: the outcome is, the process is not
  assert t.verify(p, lucky) and not t.token_labels(p, words(lucky))[-1]


def test_modchain_wrong_solutions_break_at_one_operand_or_operator():
  """Each wrong solution follows the right one up to one token of one step (an operand value
  or the operator), computes that step from what it wrote, and carries it on; its exact
  labels flip there and stay false."""
  t, rng = ModChain(), np.random.default_rng(0)
  kinds = {"operand": 0, "operator": 0}
  for p in t.split("hard")[:100]:
    good, bad = t.solution(p).split(), t.wrong_solution(p, rng).split()
    assert len(good) == len(bad)
    first = next(i for i, (g, b) in enumerate(zip(good, bad)) if g != b) if good != bad else None
    if first is None:
      continue  # impossible: a shift of 1..p-1 or another operator always changes a token
    kinds["operator" if bad[first] in "+-*" else "operand"] += 1
    assert first % 8 in (2, 3, 4)  # within "v = a op b = r ;"
    labels = t.token_labels(p, bad + ["<eos>"])
    assert labels == [i < first for i in range(len(labels))]
    steps = " ".join(bad).split(" ; ")[:-1]
    assert all(re.fullmatch(r"[a-z] = \d+ [+\-*] \d+ = \d+", s) for s in steps)  # well-formed throughout
  assert kinds["operand"] > 2 * kinds["operator"] > 0, kinds


def test_countdown_verifiers_hand_written():
  from tts_jax.tasks.countdown import CountdownProblem
  t = Countdown()
  p = CountdownProblem(numbers=(7, 3, 12, 5), target=41, steps=((12, "*", 3, 36), (36, "+", 5, 41)))
  good = "12 * 3 = 36 ; 36 + 5 = 41 ; answer 41"
  assert t.solution(p) == good and t.verify(p, good) and t.step_labels(p, good) == [True, True]
  # Valid arithmetic that cannot reach 41 any more: 7 + 5 = 12 leaves {3, 12, 12}.
  dead = "7 + 5 = 12 ; 12 * 3 = 36 ; answer 36"
  assert not reachable((3, 12, 12), 41)
  assert not t.verify(p, dead) and t.step_labels(p, dead) == [False, False]
  alt = "7 - 3 = 4 ; 12 * 4 = 48 ; 48 - 5 = 43 ; answer 43"
  assert not t.verify(p, alt)
  assert t.step_labels(p, alt)[0] == reachable((4, 5, 12), 41)
  reuse = "12 * 3 = 36 ; 36 + 5 = 41 ; 41 - 3 = 38 ; answer 41"  # 3 used twice
  assert not t.verify(p, reuse)
  for bad in ["", "answer 41", "12 * 3 = 35 ; 35 + 6 = 41 ; answer 41", "12 / 5 = 2 ; answer 41",
              "3 - 7 = 4 ; answer 41", "12 * 3 = 36 ; 36 + 5 = 41 ;", "12 * 3 = 36 ; 36 + 5 = 41 ; answer 40",
              "12 * 3 = 36 36 + 5 = 41 ; answer 41"]:
    assert not t.verify(p, bad), bad
  assert t.step_labels(p, "12 / 5 = 2 ; 36 + 5 = 41 ;") == [False, False]


# -- oracle process verifiers against brute force ---------------------------------

def brute_force_values(pool):
  """Every value an expression over a sub-multiset of `pool` can take (bottom-up over subsets)."""
  n = len(pool)
  vals = {}
  for mask in range(1, 1 << n):
    idx = [i for i in range(n) if mask >> i & 1]
    if len(idx) == 1:
      vals[mask] = {pool[idx[0]]}
      continue
    out = set()
    sub = (mask - 1) & mask
    while sub:
      rest = mask ^ sub
      if rest:
        for a in vals[sub]:
          for b in vals[rest]:
            out.add(a + b)
            out.add(a * b)
            if a > b:
              out.add(a - b)
            if b > 1 and a % b == 0:
              out.add(a // b)
      sub = (sub - 1) & mask
    vals[mask] = out
  return set().union(*vals.values())


def test_countdown_reachability_matches_brute_force():
  rng = np.random.default_rng(0)
  checked = {True: 0, False: 0}
  for _ in range(300):
    pool = tuple(sorted(int(x) for x in rng.integers(1, 10, size=int(rng.integers(1, 5)))))
    values = brute_force_values(pool)
    for target in range(1, 60):
      got = reachable(pool, target)
      assert got == (target in values), (pool, target)
      checked[got] += 1
  assert min(checked.values()) > 1000


def brute_force_modchain_values(problem, modulus=23):
  """Evaluates the DAG by recursion from each variable (no reliance on listing order)."""
  defs = {a[0]: a for a in problem.assignments}

  def value(x):
    if x.isdigit():
      return int(x)
    _, l, op, r = defs[x]
    a, b = value(l), value(r)
    return {"+": a + b, "-": a - b, "*": a * b}[op] % modulus
  return {v: value(v) for v in defs}


def test_modchain_step_oracle_matches_brute_force():
  t = ModChain()
  rng = np.random.default_rng(1)
  seen = {True: 0, False: 0}
  for i in range(200):
    p = t.generate(5, i)
    vals = brute_force_modchain_values(p)
    assert vals[p.query] == p.answer
    defs = {a[0]: a for a in p.assignments}
    for var in defs:
      _, l, op, r = defs[var]
      a = int(l) if l.isdigit() else vals[l]
      b = int(r) if r.isdigit() else vals[r]
      res = vals[var]
      # A random corruption of one field, or none.
      fields = [var, a, op, b, res]
      k = int(rng.integers(0, 6))
      if k == 1:
        fields[1] = (a + 1) % 23
      elif k == 2:
        fields[2] = "+" if op != "+" else "*"
      elif k == 3:
        fields[3] = (b + int(rng.integers(1, 23))) % 23
      elif k == 4:
        fields[4] = (res + 1) % 23
      step = f"{fields[0]} = {fields[1]} {fields[2]} {fields[3]} = {fields[4]}"
      truth = (fields[2] == op and fields[1] == a and fields[3] == b and
               fields[4] == {"+": a + b, "-": a - b, "*": a * b}[op] % 23)
      assert t.step_correct(p, step) == truth, (t.prompt(p), step)
      seen[truth] += 1
  assert min(seen.values()) > 100
