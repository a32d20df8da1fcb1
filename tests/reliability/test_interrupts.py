"""A new user's first minutes (issue 24): a wrong broker address gives one clear line and a
prompt non-zero exit; Ctrl-C (SIGINT) stops ``ecgstream run`` and ``ecgstream train`` within
5 s with one line saying so. Real subprocesses, a real broker, real WFDB records."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from streaming.conftest import free_port
from streaming.helpers import wait_until

pytestmark = pytest.mark.integration
BUNDLED = Path(__file__).resolve().parents[2] / "ecgstream" / "data" / "mitdb"


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    """``python -m ecgstream ARGS`` from ``cwd`` (the ecgstream of PYTHONPATH)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ecgstream", *args], cwd=cwd, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _interrupt(proc: subprocess.Popen) -> tuple[int, str, float]:
    """SIGINT ``proc``; its exit code, stderr and the seconds it took to exit."""
    t = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err, time.perf_counter() - t


def test_an_unreachable_broker_is_one_line_and_a_prompt_exit(tmp_path):
    port = free_port()  # nothing listens there
    t = time.perf_counter()
    proc = _start(["run", "--bootstrap", f"127.0.0.1:{port}", "--outbox", str(tmp_path / "o")],
                  tmp_path)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("ecgstream run kept trying an unreachable broker for 40 s")
    seconds = time.perf_counter() - t
    print(f"unreachable broker: exit {proc.returncode} after {seconds:.1f} s")
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert lines[-1].startswith("ecgstream run: error: BrokerUnavailable: no Kafka broker answers")
    assert f"127.0.0.1:{port}" in lines[-1] and len(lines) == 2, err  # the banner and the error
    assert seconds < 20


def test_ctrl_c_stops_the_worker_within_5_s(broker, tmp_path, energy_model):
    port = free_port()
    proc = _start(["run", "--bootstrap", broker, "--topic", "t-sigint", "--group", "g-sigint",
                   "--model", str(energy_model), "--outbox", str(tmp_path / "o.sqlite"),
                   "--metrics-port", str(port)], tmp_path)  # fmt: skip

    def consuming() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return json.loads(r.read())["status"] == "ok"
        except OSError:
            return False

    assert wait_until(consuming, 40), "the worker did not start consuming"
    code, err, seconds = _interrupt(proc)
    print(f"run: exit {code} {seconds:.2f} s after SIGINT")
    assert seconds < 5 and code == 130, (seconds, code, err)
    assert "ecgstream run: interrupted" in err and "Traceback" not in err, err


def test_ctrl_c_stops_training_within_5_s(tmp_path):
    pytest.importorskip("torch")
    proc = _start(["train", "--leads", "MLII", "--val-records", "201", "--epochs", "100",
                   "--no-progress", "--checkpoint-dir", str(tmp_path / "ckpt"), str(BUNDLED)],
                  tmp_path)  # fmt: skip
    # interrupted once it is training (its first checkpoint is written after an epoch), or
    # after 20 s whatever it is doing
    wait_until(lambda: (tmp_path / "ckpt" / "last.pt").exists(), 20)
    assert proc.poll() is None, proc.communicate()
    code, err, seconds = _interrupt(proc)
    print(f"train: exit {code} {seconds:.2f} s after SIGINT")
    assert seconds < 5 and code == 130, (seconds, code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert "ecgstream train: interrupted (Ctrl-C)" in lines and "Traceback" not in err, err
