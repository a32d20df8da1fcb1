"""``ecgstream run --replay`` (the embedded default) and ``ecgstream replay`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from conftest import SHIPPED_MODEL, synthetic_ecg, write_record
from kafka import KafkaConsumer

from ecgstream.streaming.wire import decode

from .helpers import burst


def _ecgstream(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecgstream", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    calm = synthetic_ecg(20, 360, seed=5, n_leads=2)
    write_record(folder, "calm", calm, 360, ["MLII", "V1"])
    write_record(folder, "noisy", burst(calm, 360, 8.0, 3.0), 360, ["MLII", "V1"])
    (folder / "RECORDS").write_text("calm\nnoisy\n")
    return folder


def test_run_replay_prints_alerts_and_a_summary(folder, energy_model, tmp_path):
    scores = tmp_path / "scores.jsonl"
    args = (
        "run",
        "--replay",
        str(folder),
        "--model",
        str(energy_model),
        "--no-progress",
        "--t0",
        "1700000000",
    )
    out = _ecgstream(*args, "--scores-out", str(scores))
    assert out.returncode == 0, out.stderr
    alerts = [json.loads(line) for line in out.stdout.splitlines()]
    assert alerts and {a["stream"] for a in alerts} == {"noisy"}
    assert all(a["type"] == "ecg.anomaly" and a["id"].startswith("alert_") for a in alerts)
    assert "streams: 2" in out.stderr and "windows scored: 38" in out.stderr
    assert f"alerts: {len(alerts)} (anomaly {len(alerts)})" in out.stderr
    assert len(scores.read_text().splitlines()) == 38
    again = _ecgstream(*args)  # same streams, same time: the same alert ids
    assert [json.loads(line)["id"] for line in again.stdout.splitlines()] == [
        a["id"] for a in alerts
    ]


@pytest.mark.skipif(not SHIPPED_MODEL.exists(), reason="the shipped model is not in models/ yet")
def test_embedded_default_with_the_shipped_model_and_bundled_ecg():
    t = time.time()
    out = _ecgstream("run", "--replay", "--no-progress", timeout=60)
    assert out.returncode == 0, out.stderr
    assert time.time() - t < 60
    assert "streams: 2" in out.stderr and "windows scored:" in out.stderr
    for line in out.stdout.splitlines():
        alert = json.loads(line)
        assert (
            alert["stream"] in ("119", "201") and alert["model"]["name"] == "consensus-mitdb-mlii"
        )


def test_clear_errors_without_traceback(folder, tmp_path):
    out = _ecgstream("run", "--replay", str(folder), "--model", str(tmp_path / "nope.onnx"))
    assert out.returncode == 2 and "nope.onnx" in out.stderr and "Traceback" not in out.stderr
    out = _ecgstream("replay", str(tmp_path / "missing-record"), "--bootstrap", "127.0.0.1:1")
    assert out.returncode == 2 and "missing-record" in out.stderr and "Traceback" not in out.stderr
    assert "example" in _ecgstream("run", "--help").stdout


@pytest.mark.integration
def test_replay_publishes_every_chunk_keyed_by_stream(folder, broker):
    topic = f"replay-{uuid.uuid4().hex[:6]}"
    out = _ecgstream(
        "replay",
        str(folder),
        "--bootstrap",
        broker,
        "--topic",
        topic,
        "--speed",
        "0",
        "--copies",
        "2",
        "--encoding",
        "json",
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    c = KafkaConsumer(
        topic, bootstrap_servers=broker, auto_offset_reset="earliest", consumer_timeout_ms=3000
    )
    chunks = [decode(r.value, r.key) for r in c]
    c.close()
    assert len(chunks) == 2 * 2 * 20
    by_stream: dict = {}
    for ch in chunks:
        by_stream.setdefault(ch.stream, []).append(ch.seq)
    assert set(by_stream) == {"calm-0000", "calm-0001", "noisy-0000", "noisy-0001"}
    assert all(sorted(v) == list(range(20)) for v in by_stream.values())


def test_serving_imports_no_torch():
    code = (
        "import sys, ecgstream.cli as c; c.build_parser();"
        "import ecgstream.streaming.worker, ecgstream.streaming.local, ecgstream.streaming.replay;"
        "import ecgstream.sinks.router, ecgstream.sinks.receiver;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
