"""Execute every notebook in ``notebooks/`` so that none can rot (issue 9, item 6).

The kernel is ``python3``: a plain ``pip install ipykernel`` puts that kernelspec in ``<venv>/share/jupyter``
(and jupyter_client also falls back to ipykernel's built-in spec), and jupyter_client replaces its ``python``
command with ``sys.executable``, so the notebooks run in the test interpreter;
``test_kernel_is_this_interpreter`` checks that, so a notebook can never silently run against another
installation of fastsample.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK_DIR = Path(__file__).parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CAPABILITIES = ("schedulers", "guidance", "caching", "training_weights", "evaluation")


def _execute(nb, tmp_path: Path):
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    return client.execute()


def test_one_notebook_per_capability():
    names = [path.stem for path in NOTEBOOKS]
    assert len(names) == len(CAPABILITIES), names
    for capability in CAPABILITIES:
        assert sum(name.endswith(capability) for name in names) == 1, (capability, names)


def test_notebooks_are_saved_without_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


def test_kernel_is_this_interpreter(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys\nprint(sys.executable)")])
    _execute(nb, tmp_path)
    printed = nb.cells[0].outputs[0]["text"].strip()
    assert Path(printed).resolve() == Path(sys.executable).resolve()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    _execute(nb, tmp_path)  # raises CellExecutionError on the first failing cell
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, [f"{e['ename']}: {e['evalue']}" for e in errors]
