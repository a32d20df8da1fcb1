"""The package as users install it: Python floor, type marker, and the shipped models in the wheel
(so a plain, non-editable `pip install .` runs `ecgstream run --replay`; CI also installs the
wheel into a fresh environment and runs it, `.ci/run`)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_python_floor_and_type_marker():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["requires-python"] == ">=3.11"  # ecgstream.config imports tomllib
    assert project["tool"]["ruff"]["target-version"] == "py311"
    assert (REPO / "ecgstream" / "py.typed").exists()


def test_the_default_model_is_found_through_the_package():
    from ecgstream.streaming.worker import SHIPPED_MODEL, find_model

    model = find_model()
    assert model == REPO / "ecgstream" / "_models" / SHIPPED_MODEL
    assert model.resolve() == (REPO / "models" / SHIPPED_MODEL).resolve()


def test_the_wheel_holds_the_shipped_models_and_the_type_marker(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("ecgstream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (REPO / "models").glob("*.onnx")}
    assert {f"ecgstream/_models/{n}" for n in shipped} <= names
    assert "ecgstream/py.typed" in names and "ecgstream/data/mitdb/116.dat" in names
