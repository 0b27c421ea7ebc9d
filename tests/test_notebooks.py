"""The Colab notebooks (colab/*.ipynb): stored without outputs, each opening with its "Open in
Colab" badge and an install cell, and each executed top to bottom on CPU (nbclient, the
Jupyter kernel of this Python), in a scratch directory so that their runs/ stay out of the tree."""

import json
import pathlib
import shutil

import nbclient
import nbformat
import pytest

COLAB = pathlib.Path(__file__).resolve().parent.parent / "colab"
NOTEBOOKS = sorted(p.name for p in COLAB.glob("*.ipynb"))
REPO = "tts-jax/tts_jax"  # the GitHub repository the badges open
CELL_TIMEOUT_S = 300  # one cell; the slowest notebook (02_search) takes ~80 s in all on 2 CPU cores


def test_the_four_notebooks_exist():
  assert NOTEBOOKS == ["01_quickstart.ipynb", "02_search.ipynb", "03_exact_smc.ipynb", "04_real_models.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stripped_and_opens_in_colab(name):
  nb = json.loads((COLAB / name).read_text())
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), f"{name}: outputs not stripped"
  first = "".join(nb["cells"][0]["source"])
  assert f"(https://colab.research.google.com/github/{REPO}/blob/main/colab/{name})" in first, \
      f"{name}: the first cell must be an Open in Colab badge for this notebook"
  assert "pip" in "".join(code[0]["source"]), f"{name}: the first code cell must install the library"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path):
  shutil.copy(COLAB / name, tmp_path / name)
  nb = nbformat.read(tmp_path / name, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, naming the cell, on any error
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
  assert not errors


def test_readme_prompting_example_runs(capsys):
  """The README's "Prompting the shipped policy" block, executed as written."""
  readme = (COLAB.parent / "README.md").read_text()
  block = readme.split("Prompting the shipped policy", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
  exec(compile(block, "README.md", "exec"), {})
  printed = capsys.readouterr().out
  assert "? c :" in printed and printed.rstrip().endswith(("True", "False"))
