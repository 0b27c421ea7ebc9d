"""The layer order of docs/ARCHITECTURE.md holds for every import in tts_jax, function-level ones
included, and no two modules import each other (directly or through a chain)."""

import ast
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
PKG = os.path.join(ROOT, "tts_jax")


def documented_layers() -> list[str]:
  """The layer names, bottom first, from the block between <!-- layers --> markers."""
  text = open(os.path.join(ROOT, "docs", "ARCHITECTURE.md")).read()
  block = re.search(r"<!-- layers -->(.*?)<!-- /layers -->", text, re.S)
  assert block, "docs/ARCHITECTURE.md must list the layers between <!-- layers --> markers"
  return re.findall(r"^\s*\d+\.\s+`(\w+)`", block.group(1), re.M)


def modules() -> dict[str, str]:
  """Dotted module name -> file, for every module of the package."""
  out = {}
  for dirpath, _, files in os.walk(PKG):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].split(os.sep)
        if rel[-1] == "__init__":
          rel = rel[:-1]
        out[".".join(rel)] = os.path.join(dirpath, f)
  return out


def imports(path: str, name: str, known: set[str]) -> list[tuple[str, int]]:
  """(imported tts_jax module, line) for every import statement of the file, at any depth."""
  tree = ast.parse(open(path).read())
  is_pkg = path.endswith("__init__.py")
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(a.name, node.lineno) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: resolve against this module's package
        base = name.split(".")[:len(name.split(".")) - node.level + (1 if is_pkg else 0)]
        mod = ".".join(base + ([node.module] if node.module else []))
      else:
        mod = node.module
      out.append((mod, node.lineno))
      out += [(f"{mod}.{a.name}", node.lineno) for a in node.names if f"{mod}.{a.name}" in known]
  return [(m, line) for m, line in out if m == "tts_jax" or m.startswith("tts_jax.")]


def layer_of(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "tts_jax"


def test_every_package_has_a_documented_layer():
  layers = documented_layers()
  assert len(layers) == len(set(layers)) and len(layers) >= 10, layers
  present = {layer_of(m) for m in modules()} - {"tts_jax"}
  assert present <= set(layers), f"undocumented layers: {sorted(present - set(layers))}"


def test_imports_follow_the_layer_order():
  rank = {name: i for i, name in enumerate(documented_layers())}
  rank["tts_jax"] = -1  # the root package's own __init__
  mods = modules()
  bad = []
  for name, path in sorted(mods.items()):
    for target, line in imports(path, name, set(mods)):
      if rank[layer_of(target)] > rank[layer_of(name)]:
        bad.append(f"{os.path.relpath(path, ROOT)}:{line} ({layer_of(name)}) imports {target} "
                   f"({layer_of(target)}, a higher layer)")
  assert not bad, "\n".join(bad)


def test_no_import_cycles():
  mods = modules()
  graph = {name: {t for t, _ in imports(path, name, set(mods)) if t in mods and t != name}
           for name, path in mods.items()}
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for t in sorted(graph[m]):
      if state.get(t) == "open":
        pytest.fail("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
      if t not in state:
        visit(t)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)


def test_the_checker_sees_function_level_imports(tmp_path):
  f = tmp_path / "mod.py"
  f.write_text("def f():\n  from tts_jax.eval import runner\n  import tts_jax.models.lm\n")
  found = [m for m, _ in imports(str(f), "tts_jax.kernels.mod", {"tts_jax.eval.runner"})]
  assert found == ["tts_jax.eval", "tts_jax.eval.runner", "tts_jax.models.lm"]


def test_the_documented_strategy_example_runs():
  """The worked example of docs/ARCHITECTURE.md ("How to add a selection strategy") is real code."""
  import jax
  import numpy as np

  from tests.tabular_target import make_target
  from tts_jax.smc import SMCConfig, run_smc
  text = open(os.path.join(ROOT, "docs", "ARCHITECTURE.md")).read()
  section = text[text.index("## How to add a selection strategy"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  namespace = {}
  exec(compile(code, "ARCHITECTURE.md", "exec"), namespace)
  top_half = namespace["TopHalf"]()
  with pytest.raises(ValueError, match="even number"):
    SMCConfig(num_particles=5, select=top_half)
  tgt = make_target(vocab=4, max_new=4, prompt=(1,), stops=(), seed=3)
  cfg = SMCConfig(num_particles=8, max_new_tokens=4, max_step_tokens=1, select=top_half)
  p = run_smc(tgt.lm, tgt.params, *tgt.prompts(3), jax.random.key(0), cfg=cfg, potential=tgt.potential)
  anc = np.asarray(p.ancestors)
  np.testing.assert_array_equal(anc[:, :4], anc[:, 4:])  # the second half copies the first
  assert int(np.asarray(p.num_resamples).min()) == 3  # selected after every step but the last
