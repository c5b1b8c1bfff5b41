"""The notebooks run top to bottom, so they cannot rot; and they are stored without outputs,
so they stay small and reviewable.

Each runs in a temporary folder (it writes nothing into the repository), with a kernel of
this Python, where guppylm is installed; colab.ipynb in its tiny configuration (GUPPY_TINY=1).
A cell that raises fails the test and names the cell.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT = 900  # seconds; generous: a busy 2-core machine can be several times slower


def run_notebook(name: str, folder: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()
    return nb


def outputs_text(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
                   for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)


def test_walkthrough_runs_every_stage(tmp_path):
    nb = run_notebook("walkthrough.ipynb", tmp_path)
    run = tmp_path / "walkthrough" / "runs"
    assert len(list(run.glob("*/model.safetensors"))) == 1
    assert {p.name for p in tmp_path.glob("walkthrough/inspect/*.png")} == {"attention.png",
                                                                            "tokens.png"}
    text = outputs_text(nb)
    assert "| step | val loss |" in text  # the learning timeline
    assert "topic: the likeliest" in text and "logit lens" in text  # the inspect section


def test_colab_runs_its_tiny_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("GUPPY_TINY", "1")
    nb = run_notebook("colab.ipynb", tmp_path)
    assert (tmp_path / "runs" / "guppy" / "report.md").is_file()
    assert (tmp_path / "guppy-run.zip").is_file()
    text = outputs_text(nb)
    assert "already installed" in text and "you:   hi guppy\nguppy: " in text


@pytest.mark.parametrize("name", ["walkthrough.ipynb", "colab.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code), \
        f"{name}: stored with outputs; clear them (Jupyter: Edit > Clear Outputs of All Cells)"
