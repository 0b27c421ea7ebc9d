"""Final answers of math solutions: the last `\\boxed{...}`, GSM8K's `#### n`, and grading by
mathematical equivalence with Hugging Face's `math-verify` (fractions, `\\frac` vs `/`,
`\\dfrac`, percentages, intervals, sets of several answers, units, LaTeX noise).

    extract_answer("... so the answer is $\\boxed{\\frac{3}{4}}$.")   # "\\frac{3}{4}"
    math_equal("0.75", "... $\\boxed{\\dfrac34}$")                       # True
"""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")


def last_boxed(text: str) -> str | None:
  """The content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, or of
  `\\boxed x` (a boxed single token); None if there is none or its braces never close."""
  matches = list(_BOXED.finditer(text))
  for m in reversed(matches):
    i = m.end()
    if i < len(text) and text[i] == "{":
      depth = 0
      for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
          return text[i + 1:j].strip()
      continue  # unbalanced: try an earlier box
    tail = re.match(r"[^\s$.,;]+", text[i:])
    if tail:
      return tail.group(0)
  return None


def gsm8k_final(text: str) -> str | None:
  """The number after the last `####` (GSM8K's answer line), thousands separators and a
  trailing period dropped; None without one."""
  if "####" not in text:
    return None
  tail = text.rsplit("####", 1)[1].strip().split("\n")[0].strip()
  tail = tail.replace(",", "").replace("$", "").rstrip(".").strip()
  return tail or None


def extract_answer(text: str) -> str | None:
  """A solution's final answer: the last `\\boxed{}`, else GSM8K's `#### n`, else None."""
  boxed = last_boxed(text)
  return boxed if boxed is not None else gsm8k_final(text)


def _parse(text: str, *, timeout: int | None):
  from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse  # noqa: PLC0415 (slow import)
  configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
  return parse(text, extraction_config=configs, parsing_timeout=timeout)


BARE_ANSWER_MAX_CHARS = 64


def _is_bare_answer(text: str) -> bool:
  """A short one-line prediction without words of prose: graded as the answer itself
  (math-verify's text extraction does not read bare intervals such as "(1,2]")."""
  text = text.strip()
  words = re.search(r"[A-Za-z]{3,}", re.sub(r"\\[A-Za-z]+", "", text))  # LaTeX commands are not words
  return 0 < len(text) <= BARE_ANSWER_MAX_CHARS and "\n" not in text and not words


def _as_latex(answer: str) -> str:
  """A bare reference answer as math-verify reads it best: boxed (so LaTeX and plain text both parse)."""
  answer = answer.strip()
  return answer if "\\boxed" in answer else f"\\boxed{{{answer}}}"


def math_equal(reference: str, prediction: str, *, timeout: int | None = 5) -> bool:
  """Whether `prediction` (a whole solution or just an answer) states the reference answer,
  by `math_verify.verify` (symbolic and numeric equivalence; the reference is read as the
  gold side). A prediction with a `\\boxed{}` is graded on its last box only; a GSM8K-style
  `#### n` on n. timeout: seconds per parse and per comparison (math-verify's own signal
  based timeout: main thread only; None disables it, e.g. in worker threads)."""
  from math_verify import verify  # noqa: PLC0415
  final = extract_answer(prediction)
  if final is None and _is_bare_answer(prediction):
    final = prediction  # "(1, 2]", "0.5": read as an answer, not searched as a text
  pred = _parse(_as_latex(final) if final is not None else prediction, timeout=timeout)
  gold = _parse(_as_latex(reference), timeout=timeout)
  if not gold or not pred:
    return False
  return bool(verify(gold, pred, timeout_seconds=timeout))
