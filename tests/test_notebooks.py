"""Every notebook in notebooks/ executes top to bottom at its tiny preset; a cell error fails the test."""

import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_notebooks_are_listed_and_stripped():
    readme = (NOTEBOOKS[0].parent / "README.md").read_text()
    nbformat = pytest.importorskip("nbformat")
    for path in NOTEBOOKS:
        assert path.name in readme, f"{path.name} is not listed in notebooks/README.md"
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs in git"
        assert any('PRESET = "tiny"' in c.source for c in nb.cells), f"{path.name} lacks a PRESET = \"tiny\" cell"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell
