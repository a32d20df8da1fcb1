"""Crafted model files (issue 24): every field of the spec is checked for type and range when
the model is loaded, with one line naming the field, exit code 2 and no traceback, before the
worker joins its group; training checkpoints load with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecgstream.runtime.model_file import SPEC_KEY, ModelFileError
from ecgstream.runtime.scorer import Scorer


def _with_spec(src: Path, dst: Path, change) -> Path:
    """A copy of model ``src`` whose spec JSON is ``change(spec dict)`` (or the text it returns)."""
    import onnx

    model = onnx.load(str(src))
    for entry in model.metadata_props:
        if entry.key == SPEC_KEY:
            spec = json.loads(entry.value)
            out = change(spec)
            entry.value = out if isinstance(out, str) else json.dumps(spec)
    onnx.save(model, str(dst))
    return dst


def _drop(key):
    return lambda s: s.pop(key)


def _set(*path_and_value):
    *path, value = path_and_value

    def change(s):
        for k in path[:-1]:
            s = s[k]
        s[path[-1]] = value

    return change


CRAFTED = {
    "no_window": (_drop("window"), "field 'window' is missing"),
    "window_text": (_set("window", "200"), "field 'window'"),
    "window_float": (_set("window", 1e12), "field 'window'"),
    "window_huge": (_set("window", 10**12), "longer than 3600 s"),
    "hop_zero": (_set("hop", 0), "field 'hop'"),
    "hop_over_window": (_set("hop", 500), "hop 500 is longer than the window 200"),
    "fs_zero": (_set("preprocessing", "fs", 0), "field 'preprocessing.fs'"),
    "fs_negative": (_set("preprocessing", "fs", -100), "field 'preprocessing.fs'"),
    "order_huge": (_set("preprocessing", "order", 10**6), "field 'preprocessing.order'"),
    "band_inverted": (_set("preprocessing", "highpass_hz", 45.0), "highpass_hz 45"),
    "scale_zero": (_set("score_norm", "scale", 0), "field 'score_norm.scale'"),
    "threshold_nan": (
        lambda s: json.dumps(s).replace('"default": 4.0', '"default": NaN'),
        "field 'thresholds.default'",
    ),  # fmt: skip
    "no_leads": (_set("leads", []), "field 'leads'"),
    "leads_vs_graph": (_set("leads", ["MLII", "V1"]), "takes 1 leads"),
    "not_json": (lambda s: "{window: 200", "metadata is not JSON"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_spec_is_refused_with_the_field_named(energy_model, tmp_path, case):
    change, expected = CRAFTED[case]
    bad = _with_spec(energy_model, tmp_path / f"{case}.onnx", change)
    t = time.perf_counter()
    with pytest.raises(ModelFileError) as err:
        Scorer(bad)
    assert time.perf_counter() - t < 5
    message = str(err.value)
    assert expected in message and "\n" not in message, message
    assert str(bad) in message


def test_the_shipped_models_pass(energy_model):
    root = Path(__file__).resolve().parents[2]
    for path in [energy_model, *sorted((root / "models").glob("*.onnx"))]:
        assert Scorer(path).spec.window > 0


def _cli(args: list[str], cwd: Path, timeout_s: float = 30.0) -> tuple[int, str, float]:
    """Run ``python -m ecgstream ARGS`` in ``cwd`` (the ecgstream of PYTHONPATH, not of the cwd)."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ecgstream", *args], capture_output=True, text=True,
        timeout=timeout_s, cwd=cwd,
    )  # fmt: skip
    return proc.returncode, proc.stderr, time.perf_counter() - t


@pytest.mark.integration
@pytest.mark.parametrize("case", ["hop_zero", "order_huge", "window_text"])
def test_run_and_score_refuse_a_crafted_model_before_any_broker_or_record(
    energy_model, tmp_path, case, broker
):
    bad = _with_spec(energy_model, tmp_path / "bad.onnx", CRAFTED[case][0])
    for args in (
        ["run", "--model", str(bad), "--bootstrap", broker, "--topic", "t-model",
         "--group", "g-model", "--outbox", str(tmp_path / "o.sqlite")],
        ["score", "--model", str(bad), str(tmp_path / "no-such-record"), "--out", str(tmp_path / "s")],
    ):  # fmt: skip
        code, err, seconds = _cli(args, tmp_path)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert CRAFTED[case][1] in lines[0] and "Traceback" not in err
        assert seconds < 15
        print(f"{args[0]} with {case}: exit {code} after {seconds:.1f} s: {lines[0]}")
    # the worker never joined its group
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        groups = {g["group_id"] if isinstance(g, dict) else g[0] for g in admin.list_groups()}
        assert "g-model" not in groups
    finally:
        admin.close()


def test_checkpoints_load_without_running_pickled_code(tmp_path):
    """``torch.load(weights_only=True)``: a checkpoint with a pickled callable is refused
    instead of running it (it would create a file here)."""
    import os

    import torch

    from ecgstream.training.trainer import _checkpoint, load_checkpoint

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {}, "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    # what training writes (numpy scalars, paths, tensors) reads back
    import numpy as np

    _checkpoint(tmp_path / "ok.pt", best={"value": np.float64(0.5), "epoch": np.int64(3)},
                config={"out": tmp_path}, model={"w": torch.ones(2)})  # fmt: skip
    state = load_checkpoint(tmp_path / "ok.pt")
    assert state["best"] == {"value": 0.5, "epoch": 3} and state["config"]["out"] == str(tmp_path)
