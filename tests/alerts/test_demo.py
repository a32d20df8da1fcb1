"""The README's first command: the bundled excerpt alerts where its ectopic runs and AF are."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "consensus-mitdb-mlii.onnx"


@pytest.mark.skipif(not MODEL.exists(), reason="the shipped model is not in models/")
def test_the_demo_alerts_on_bigeminy_and_af_at_record_positions() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ecgstream", "run", "--replay", "--no-progress"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    msgs = [json.loads(line) for line in out.stdout.splitlines()]
    firing = {(m["stream"], m["kind"]) for m in msgs if m["status"] == "firing"}
    # 119: ventricular bigeminy from 21 s; 201: atrial fibrillation until 48 s (annotations)
    assert ("119", "anomaly") in firing and ("201", "irregular_rhythm") in firing
    assert any(m["stream"] == "119" and m["status"] == "escalated" for m in msgs)
    # every alert is resolved by the end of the replay
    ids = {m["alert_id"] for m in msgs if m["type"] != "signal.technical"}
    resolved = {m["alert_id"] for m in msgs if m["status"] == "resolved"}
    assert ids == resolved
    # readable lines give positions in the record (seconds), not wall-clock times
    lines = [x for x in out.stderr.splitlines() if "stream 119" in x and "firing" in x]
    assert lines and "UTC" not in lines[0]
    start = float(re.search(r"(-?\d+\.\d)-\s*(-?\d+\.\d) s", lines[0]).group(1))
    assert -1.0 <= start <= 30.0
    # and so does the summary's highest window per stream (a 180 s excerpt)
    peaks = re.findall(
        r"^\s+(\d+)\s+[\d.]+\s+window at (\d+\.\d) s of the record$", out.stderr, re.M
    )
    assert {name for name, _ in peaks} == {"119", "201"}, out.stderr[-800:]
    assert all(0.0 <= float(t) <= 180.0 for _, t in peaks)
