"""The quick-start notebook runs top to bottom (executed with nbclient, so it cannot rot), and
the committed copy shows its outputs and reads only files that come with the package."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def _outputs(nb) -> tuple[str, list]:
    code = [c for c in nb.cells if c.cell_type == "code"]
    text = "".join(o.get("text", "") for c in code for o in c.get("outputs", []))
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    return text, images


def test_the_committed_notebook_has_its_outputs_and_no_absolute_paths():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    text, images = _outputs(nb)
    assert "beat AUROC" in text and len(images) >= 2, "execute the notebook and save its outputs"
    sources = "".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "/work/" not in sources and 'Path("/' not in sources
    assert "find_model()" in sources and "bundled_records()" in sources


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    with warnings.catch_warnings():  # a cell without an id is to become an error in nbformat
        warnings.filterwarnings("error", message="Cell is missing an id field")
        nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:  # run it afresh
        if cell.cell_type == "code":
            cell.outputs = []
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    text, images = _outputs(nb)
    assert "model: consensus-mitdb-mlii.onnx" in text and "records: 119, 201" in text
    # the headline model works on the bundled records (a collapsed model would sit near 0.5)
    beat = float(text.split("beat AUROC ")[1].split()[0])
    loc = float(text.split("localisation AUROC ")[1].split()[0])
    assert beat > 0.9 and loc > 0.8
    assert "point-level AUROC on this excerpt" in text
    assert len(images) >= 2, "the localisation and beat plots were not drawn"
