"""Model files are checked against a sha256 manifest before ONNX Runtime loads them."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from streaming.helpers import build_energy_model

from ecgstream.runtime.manifest import (
    ENV_MANIFEST,
    ManifestError,
    check_model,
    read_manifest,
    write_manifest,
)
from ecgstream.runtime.model_file import sha256_of
from ecgstream.runtime.scorer import Scorer


@pytest.fixture()
def models(tmp_path):
    folder = tmp_path / "models"
    build_energy_model(folder / "a.onnx")
    build_energy_model(folder / "b.onnx", name="other")
    return folder


def test_written_manifest_is_sha256sum_compatible_and_verifies(models):
    manifest = write_manifest(models)
    entries = read_manifest(manifest)
    assert entries == {
        "a.onnx": sha256_of(models / "a.onnx"),
        "b.onnx": sha256_of(models / "b.onnx"),
    }
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "-c", "--quiet", manifest.name], cwd=models, check=True)
    assert check_model(models / "a.onnx") == entries["a.onnx"]
    assert Scorer(models / "a.onnx").spec.name == "energy-test"


def test_tampered_model_is_refused_with_both_hashes(models):
    manifest = write_manifest(models)
    expected = read_manifest(manifest)["a.onnx"]
    with open(models / "a.onnx", "ab") as fh:  # one appended byte
        fh.write(b"\0")
    actual = sha256_of(models / "a.onnx")
    with pytest.raises(ManifestError) as info:
        Scorer(models / "a.onnx")
    msg = str(info.value)
    assert str(models / "a.onnx") in msg and expected in msg and actual in msg
    assert isinstance(info.value, ValueError)  # the CLI prints it without a traceback
    Scorer(models / "b.onnx")  # the untouched model still loads


def test_explicit_manifest_from_the_environment(models, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere" / "SHA256SUMS"
    other.parent.mkdir()
    other.write_text(f"{'0' * 64}  ../models/a.onnx\n")
    monkeypatch.setenv(ENV_MANIFEST, str(other))
    with pytest.raises(ManifestError, match="0{64}"):
        Scorer(models / "a.onnx")
    # an explicit manifest must list the model
    with pytest.raises(ManifestError, match="not listed"):
        Scorer(models / "b.onnx")
    monkeypatch.setenv(ENV_MANIFEST, str(tmp_path / "missing"))
    with pytest.raises(ManifestError, match="not found"):
        Scorer(models / "a.onnx")


def test_implicit_manifest_that_does_not_list_the_model_only_warns(models, caplog):
    (models / "SHA256SUMS").write_text(f"{sha256_of(models / 'a.onnx')}  a.onnx\n")
    with caplog.at_level("WARNING"):
        assert check_model(models / "b.onnx") is None
    assert "not listed" in caplog.text
    (models / "SHA256SUMS").write_text("not a manifest line\n")
    with pytest.raises(ManifestError, match="SHA256SUMS:1"):
        check_model(models / "a.onnx")


def test_cli_reports_a_mismatch_without_traceback(models, ecg_folder):
    write_manifest(models)
    (models / "a.onnx").write_bytes((models / "a.onnx").read_bytes()[:-1] + b"x")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ecgstream",
            "score",
            "--model",
            str(models / "a.onnx"),
            "--out",
            str(models / "out"),
            str(ecg_folder / "syn0"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "does not match the manifest" in out.stderr and "Traceback" not in out.stderr
    check = subprocess.run(
        [sys.executable, "-m", "ecgstream.runtime.manifest", "check", str(models / "SHA256SUMS")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 1 and "a.onnx" in check.stderr
