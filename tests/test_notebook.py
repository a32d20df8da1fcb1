"""The quick-start notebook runs top to bottom (executed with nbclient, so it cannot rot)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("ECGSTREAM_NOTEBOOK_QUICK", "1")  # synthetic data, a few training steps
    monkeypatch.setenv("ECGSTREAM_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    with warnings.catch_warnings():  # a cell without an id is to become an error in nbformat
        warnings.filterwarnings("error", message="Cell is missing an id field")
        nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = "".join(
        o.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
    )
    assert "quick=True real data=False" in outputs
    assert "point-level AUROC on this excerpt" in outputs
    assert (tmp_path / "quickstart-mmae.onnx").exists()
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert images, "the localisation plot was not drawn"
