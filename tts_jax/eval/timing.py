"""Where a run's time goes: wall-clock phases (exclusive: a phase opened inside another is
not counted twice) and JAX compilation, measured by JAX's own monitoring events.

Phases nest per thread: a phase opened on a worker thread (the runner draws the next batch's
pool while the current one is selected) is timed on its own, with the compilation done on
that thread, so phases that ran at the same time are each counted in full and their sum can
exceed the wall time.

    timer = Timer()
    with timer.phase("sampling"):
      ...                        # compile time inside is moved to "compile"
    timer.report()               # {"compile": s, "sampling": s, ..., "compilations": n, "total": s}
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time

import jax

PHASES = ("sampling", "verifier scoring", "search", "selection and metrics", "host: text and grading",
          "host I/O", "loading")
_COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration")
_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_active: list["Timer"] = []
_listening = False


def _on_duration(event: str, seconds: float, **_) -> None:
  if event not in _COMPILE_EVENTS:
    return
  here = threading.get_ident()  # JAX reports a compilation on the thread that compiled
  for t in _active:
    thread = t._owner.get(here, here)
    with t._lock:
      t._compile += seconds
      t._compile_on[thread] += seconds
      t._backend_compiles += event == _COMPILE_EVENTS[0]


def _on_event(event: str, **_) -> None:
  for t in _active:
    with t._lock:
      t.cache_hits += event == _CACHE_HIT


class Timer:
  """Exclusive wall-clock seconds per phase, with compilation split out (tracing, lowering
  and XLA compilation, or loading from the persistent cache), counted while the timer is
  entered (`with Timer() as t`)."""

  @property
  def compilations(self) -> int:
    """XLA compilations that did not come from the persistent cache."""
    return self._backend_compiles - self.cache_hits

  def __init__(self):
    global _listening
    if not _listening:
      jax.monitoring.register_event_duration_secs_listener(_on_duration)
      jax.monitoring.register_event_listener(_on_event)
      _listening = True
    self.seconds = {p: 0.0 for p in PHASES}
    self._backend_compiles = 0
    self.cache_hits = 0
    self._compile = 0.0
    self._compile_on: dict[int, float] = collections.defaultdict(float)  # per thread
    self._lock = threading.Lock()
    self._owner: dict[int, int] = {}  # helper thread -> the thread it works for (`working_for`)
    self._local = threading.local()  # each thread's stack of open phases
    self._start = time.perf_counter()

  @property
  def _stack(self) -> list[dict]:
    if not hasattr(self._local, "stack"):
      self._local.stack = []
    return self._local.stack

  def __enter__(self):
    _active.append(self)
    return self

  def __exit__(self, *exc):
    _active.remove(self)

  @contextlib.contextmanager
  def phase(self, name: str):
    """Counts the wall time inside, less nested phases and compilation, to `name`."""
    if name not in self.seconds:
      raise ValueError(f"unknown phase {name!r}; one of {PHASES}")
    thread = threading.get_ident()
    stack = self._stack
    frame = {"start": time.perf_counter(), "compile": self._compile_on[thread], "child_wall": 0.0,
             "child_compile": 0.0}
    stack.append(frame)
    try:
      yield
    finally:
      stack.pop()
      wall = time.perf_counter() - frame["start"]
      compiled = self._compile_on[thread] - frame["compile"]
      with self._lock:
        self.seconds[name] += max(wall - frame["child_wall"] - (compiled - frame["child_compile"]), 0.0)
      if stack:
        stack[-1]["child_wall"] += wall
        stack[-1]["child_compile"] += compiled

  @contextlib.contextmanager
  def working_for(self, thread: int):
    """Inside, this thread's compilation counts as that of `thread` (a
    `threading.get_ident()`): for helpers whose caller waits on them inside its phase."""
    here = threading.get_ident()
    self._owner[here] = thread
    try:
      yield
    finally:
      del self._owner[here]

  def report(self) -> dict:
    """{phase: seconds (rounded to ms)}, "compile", "other", "total", "compilations" and
    "compilation_cache_hits"."""
    out = {p: round(s, 3) for p, s in self.seconds.items()}
    out["compile"] = round(self._compile, 3)
    total = time.perf_counter() - self._start
    out["other"] = round(max(total - sum(self.seconds.values()) - self._compile, 0.0), 3)
    out["total"] = round(total, 3)
    out["compilations"] = self.compilations
    out["compilation_cache_hits"] = self.cache_hits
    return out

  def format(self) -> str:
    r = self.report()
    total = max(r["total"], 1e-9)
    parts = [f"{p} {r[p]:.1f} s ({100 * r[p] / total:.0f}%)" for p in ("compile",) + PHASES + ("other",) if r[p] > 0]
    return (f"time: {r['total']:.1f} s = " + ", ".join(parts)
            + f"; {r['compilations']} compilations, {r['compilation_cache_hits']} loaded from the cache")
