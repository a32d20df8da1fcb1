"""Test helpers: a tiny real ONNX model with the ecgstream interface, built without torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgstream.runtime.model_file import ModelSpec, write_spec


def build_energy_model(
    path: Path,
    leads: list[str] = ("MLII",),
    fs: float = 100.0,
    window: int = 200,
    hop: int = 100,
    center: float = 0.0,
    scale: float = 1.0,
    threshold: float = 4.0,
    name: str = "energy-test",
) -> Path:
    """An ONNX graph scoring each sample by its squared amplitude (mean over leads).

    point_score = mean_leads(x^2), window_score = max over the window: large where the
    preprocessed signal is large (e.g. an injected burst), so alerts are predictable.
    """
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("windows", TensorProto.FLOAT, ["batch", len(leads), window])
    p = helper.make_tensor_value_info("point_score", TensorProto.FLOAT, ["batch", window])
    w = helper.make_tensor_value_info("window_score", TensorProto.FLOAT, ["batch"])
    nodes = [
        helper.make_node("Mul", ["windows", "windows"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["point_score"], axes=[1], keepdims=0),
        helper.make_node("ReduceMax", ["point_score"], ["window_score"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "energy", [x], [p, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    spec = ModelSpec(
        name=name,
        version="1",
        kind="test-energy",
        leads=list(leads),
        window=window,
        hop=hop,
        preprocessing={"fs": fs, "highpass_hz": 0.5, "lowpass_hz": 40.0, "order": 2},
        score_norm={"center": center, "scale": scale},
        thresholds={"default": threshold},
    )
    write_spec(path, spec)
    return path


def burst(signal: np.ndarray, fs: float, at_s: float, dur_s: float, amp: float = 3.0) -> np.ndarray:
    """A copy of ``signal`` with a 25 Hz oscillation of ``amp`` added over ``[at_s, at_s + dur_s)``."""
    out = signal.copy()
    a, b = int(at_s * fs), int((at_s + dur_s) * fs)
    t = np.arange(b - a) / fs
    out[a:b] += (amp * np.sin(2 * np.pi * 25 * t))[:, None].astype(out.dtype)
    return out


def start_worker(
    broker: str,
    topic: str,
    model: Path,
    outbox: Path,
    log_path: Path,
    webhook_url: str,
    secret: str,
    idle_s: float,
    scores_out: Path | None = None,
):
    """Start ``python -m ecgstream -v run`` as its own process in consumer group ``g-<topic>``.

    Alerts go to the webhook only (one per window: ``--min-windows 1``); the worker exits after
    ``idle_s`` seconds without messages. Output goes to ``log_path``.
    """
    import os
    import subprocess
    import sys

    args = [
        *("--bootstrap", broker, "--topic", topic, "--group", f"g-{topic}"),
        *("--model", str(model), "--outbox", str(outbox), "--webhook", webhook_url),
        *(("--scores-out", str(scores_out)) if scores_out else ()),
        *("--alerts-out", "", "--min-windows", "1", "--max-idle-s", str(idle_s)),
    ]
    env = {**os.environ, "ECGSTREAM_RUN__WEBHOOK_SECRET": secret}
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ecgstream", "-v", "run", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def read_scores(path: Path) -> list[dict]:
    """The JSON lines a worker wrote with ``--scores-out`` (a killed worker's cut last line skipped)."""
    import contextlib
    import json

    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def wait_until(pred, timeout_s: float, step: float = 0.2) -> bool:
    """Poll ``pred()`` every ``step`` seconds until it is true (True) or ``timeout_s`` passes (False)."""
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False
