"""Readers for the public math benchmarks' files, in the column layouts their datasets use.

    problems = read_problems("MATH-500/test.jsonl")          # or .json, .parquet
    problems[0].problem, problems[0].answer, problems[0].level

Recognised layouts (column names are matched case-insensitively):

- MATH / MATH-500 (HuggingFaceH4/MATH-500): problem, solution, answer, subject, level,
  unique_id. Without an answer column the answer is the solution's last `\\boxed{}`.
- GSM8K (openai/gsm8k): question, answer, where answer is the worked solution ending in
  `#### n`: the problem's answer is n and its solution the text before.
- AIME (AI-MO/aimo-validation-aime, Maxwell-Jia/AIME_2024, opencompass/AIME2025):
  problem or question, answer, optionally solution, id / ID / url.

`SAMPLE_FILE` is a 20-problem MATH-style file written for this project (its own problems,
MATH-500's columns), used by the tests and the smoke configs.
"""

from __future__ import annotations

import dataclasses
import json
import os

from tts_jax.tasks.math.answers import gsm8k_final, last_boxed

SAMPLE_FILE = os.path.join(os.path.dirname(__file__), "sample_math.jsonl")


@dataclasses.dataclass(frozen=True)
class MathProblem:
  """One benchmark problem. answer: the reference final answer (LaTeX or plain text)."""

  problem: str
  answer: str
  solution: str = ""
  subject: str = ""
  level: int | str = ""
  unique_id: str = ""


def _rows(path: str) -> list[dict]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"problem file not found: {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".parquet":
    import pyarrow.parquet as pq  # noqa: PLC0415
    return pq.read_table(path).to_pylist()
  if ext == ".jsonl":
    rows = []
    with open(path, encoding="utf-8") as fh:
      for n, line in enumerate(fh, 1):
        if line.strip():
          try:
            rows.append(json.loads(line))
          except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON line ({e.msg})") from None
    return rows
  if ext == ".json":
    with open(path, encoding="utf-8") as fh:
      try:
        data = json.load(fh)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict):  # {"data": [...]} or {"test": [...]}
      lists = [v for v in data.values() if isinstance(v, list)]
      if len(lists) != 1:
        raise ValueError(f"{path}: a JSON object must hold exactly one list of problems")
      data = lists[0]
    return data
  raise ValueError(f"{path}: unknown file type {ext!r}; use .jsonl, .json or .parquet")


def _get(row: dict, *names: str):
  low = {k.lower(): v for k, v in row.items()}
  for n in names:
    if n in low and low[n] is not None:
      return low[n]
  return None


def _problem(row: dict, where: str) -> MathProblem:
  if not isinstance(row, dict):
    raise ValueError(f"{where}: a problem must be a JSON object, got {type(row).__name__}")
  text = _get(row, "problem", "question")
  if text is None:
    raise ValueError(f"{where}: no 'problem' or 'question' column (columns: {sorted(row)})")
  answer, solution = _get(row, "answer"), _get(row, "solution") or ""
  if isinstance(answer, str) and "####" in answer:  # GSM8K: the worked solution, then #### n
    solution, answer = answer.rsplit("####", 1)[0].strip(), gsm8k_final(answer)
  if answer is None and solution:
    answer = last_boxed(solution)
  if answer is None or str(answer).strip() == "":
    raise ValueError(f"{where}: no 'answer' column and no \\boxed{{}} answer in the solution")
  if isinstance(answer, float) and answer.is_integer():
    answer = int(answer)
  uid = _get(row, "unique_id", "id", "url")
  return MathProblem(problem=str(text), answer=str(answer).strip(), solution=str(solution),
                     subject=str(_get(row, "subject", "type") or ""), level=_get(row, "level") or "",
                     unique_id="" if uid is None else str(uid))


def read_problems(path: str, limit: int | None = None) -> list[MathProblem]:
  """The problems of a MATH-500, GSM8K or AIME file (.jsonl, .json or .parquet), in file
  order, the first `limit` if given. Errors name the file, the line and the missing column."""
  rows = _rows(path)
  if limit is not None:
    rows = rows[:limit]
  if not rows:
    raise ValueError(f"{path}: no problems")
  return [_problem(r, f"{path}: problem {i}") for i, r in enumerate(rows)]
