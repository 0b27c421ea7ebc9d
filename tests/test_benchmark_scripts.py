"""Benchmark scripts are run by hand, not in CI: keep the ones that build the library's
programs from its internals in step with it (a changed internal once broke compile.py
silently)."""

import argparse
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str):
  spec = importlib.util.spec_from_file_location(f"benchmark_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_compile_benchmark_lowers_its_programs():
  """compile.py lowers the sampler and the beam engine as the runner calls them (lowered
  only, at one tiny layer: compiling is the benchmark's job)."""
  programs = _load("compile")._programs(layers=1, hidden=16)
  assert set(programs) == {"sampler", "engine"}
  assert all("while" in lowered.as_text() for lowered in programs.values())


def test_selection_benchmark_times_the_ranks_it_checks(capsys):
  """selection.py --ranks compares the library's subset orders with a stable argsort's."""
  _load("selection").ranks(argparse.Namespace(k=[1, 3, 5], problems=2, subsets=4))
  assert "identical: True" in capsys.readouterr().out
