"""The time breakdown (`tts_jax.eval.timing`): phases nest per thread, and a thread's
compilation is taken out of that thread's phases only (or its caller's, `working_for`).

Compilation events are fed to the listener directly, so the tests do not depend on how
long anything takes."""

import threading
import time

from tts_jax.eval import timing
from tts_jax.eval.timing import Timer

COMPILE = "/jax/core/compile/backend_compile_duration"


def _worker(timer, **kw):
  """A thread that opens a "sampling" phase and compiles for 100 s inside it."""
  def body():
    ctx = timer.working_for(kw["caller"]) if "caller" in kw else timer.phase("sampling")
    with ctx:
      timing._on_duration(COMPILE, 100.0)
  return threading.Thread(target=body)


def test_a_worker_threads_compilation_is_its_own():
  with Timer() as t:
    with t.phase("selection and metrics"):
      w = _worker(t)
      w.start()
      w.join()
      time.sleep(0.01)  # some wall time of its own (the report rounds to ms)
  r = t.report()
  assert r["compile"] == 100.0 and r["compilations"] == 1
  assert r["sampling"] == 0.0  # its own phase lost the 100 s (clamped at 0)
  assert r["selection and metrics"] > 0.0  # the main thread's phase did not


def test_a_helper_working_for_its_caller_charges_the_caller():
  with Timer() as t:
    with t.phase("search"):
      w = _worker(t, caller=threading.get_ident())
      w.start()
      w.join()
  r = t.report()
  assert r["compile"] == 100.0 and r["search"] == 0.0  # the waiting caller's phase is compile time


def test_phases_on_two_threads_do_not_nest():
  """A phase opened on a worker while the main thread is inside another is not its child:
  the main phase keeps its full wall time."""
  with Timer() as t:
    started, release = threading.Event(), threading.Event()

    def body():
      with t.phase("sampling"):
        started.set()
        release.wait()
        time.sleep(0.01)

    w = threading.Thread(target=body)
    with t.phase("selection and metrics"):
      w.start()
      started.wait()
      release.set()
      w.join()
  r = t.report()
  assert r["selection and metrics"] >= r["sampling"] > 0.0
