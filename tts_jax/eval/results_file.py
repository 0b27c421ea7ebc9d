"""results.jsonl as a set of records keyed by (problem, budget), and atomic writes.

A run appends one batch of records at a time. On resume the file is read back as records
keyed by (problem, budget) (each record holds every method's outcome): torn or malformed
lines, duplicates and records of problems outside the run are dropped, and a batch counts
as done only when every one of its (problem, budget) records is there, so a deleted line
costs one batch's recomputation, never a hole or a duplicate. The kept records are written
back in canonical order (problem, then budget) by an atomic replace, and again at the end
if batches were filled in out of order: the final file is byte-identical to an
uninterrupted run's.
"""

from __future__ import annotations

import json
import os


def atomic_write(path: str, data: bytes | str) -> None:
  """Writes `data` to `path` through a temporary file, fsync and rename: readers see the old
  file or the new one, never a torn one."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as fh:
    fh.write(data.encode() if isinstance(data, str) else data)
    fh.flush()
    os.fsync(fh.fileno())
  os.replace(tmp, path)


def record_line(record: dict) -> bytes:
  return (json.dumps(record, sort_keys=True) + "\n").encode()


class ResultsFile:
  """The records of a run of `num_problems` problems in batches of `batch_problems`, each
  problem at every budget of `budgets`."""

  def __init__(self, path: str, num_problems: int, batch_problems: int, budgets):
    self.path, self.num_problems, self.batch_problems = path, num_problems, batch_problems
    self.budgets = tuple(budgets)
    self.lines: dict[tuple[int, int], bytes] = {}

  @property
  def num_batches(self) -> int:
    return -(-self.num_problems // self.batch_problems)

  def keys(self, b: int) -> list[tuple[int, int]]:
    """The (problem, budget) keys of batch b, in canonical order."""
    start = b * self.batch_problems
    return [(i, k) for i in range(start, min(start + self.batch_problems, self.num_problems)) for k in self.budgets]

  def load(self) -> list[bool]:
    """Reads the file (if any) and returns, per batch, whether it is complete; keeps only
    complete batches and rewrites the file canonically (atomically) if it differed."""
    data = b""
    if os.path.isfile(self.path):
      with open(self.path, "rb") as fh:
        data = fh.read()
    found: dict[tuple[int, int], bytes] = {}
    for line in data.split(b"\n"):
      try:
        rec = json.loads(line)
        key = (int(rec["problem"]), int(rec["budget"]))
      except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        continue  # a torn or foreign line
      if 0 <= key[0] < self.num_problems and key[1] in self.budgets and isinstance(rec.get("methods"), dict):
        found.setdefault(key, record_line(rec))
    done = [all(k in found for k in self.keys(b)) for b in range(self.num_batches)]
    self.lines = {k: found[k] for b in range(self.num_batches) if done[b] for k in self.keys(b)}
    if self.canonical() != data and (data or self.lines):
      atomic_write(self.path, self.canonical())
    return done

  def canonical(self) -> bytes:
    return b"".join(self.lines[k] for b in range(self.num_batches) for k in self.keys(b) if k in self.lines)

  def append(self, records: list[dict]) -> None:
    """Appends one batch's records (one write, fsync'd)."""
    lines = [record_line(r) for r in records]
    for r, line in zip(records, lines):
      self.lines[(r["problem"], r["budget"])] = line
    with open(self.path, "ab") as fh:
      fh.write(b"".join(lines))
      fh.flush()
      os.fsync(fh.fileno())

  def finish(self) -> None:
    """Rewrites the file canonically if batches were appended out of order."""
    with open(self.path, "rb") as fh:
      data = fh.read()
    if data != self.canonical():
      atomic_write(self.path, self.canonical())
