"""Training end to end on real WFDB files: reproducibility, resume, export parity, CLI, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import synthetic_ecg, write_record  # noqa: E402

from ecgstream.cli import main  # noqa: E402
from ecgstream.runtime.model_file import read_spec  # noqa: E402
from ecgstream.runtime.scorer import Scorer  # noqa: E402
from ecgstream.signals.preprocess import preprocess  # noqa: E402
from ecgstream.signals.records import RecordError, read_record  # noqa: E402
from ecgstream.signals.windows import frame, window_starts  # noqa: E402
from ecgstream.training import TrainConfig, fit_records  # noqa: E402
from ecgstream.training.data import NoNormalWindowsError  # noqa: E402
from ecgstream.training.trainer import train_mmae  # noqa: E402

TINY = TrainConfig(
    leads=["MLII"], window_s=4.0, hop_s=2.0, epochs=2, steps_per_epoch=4, batch_size=8,
    val_windows=32, val_records=["syn2"], threads=1,
    model_settings={"segment": 20, "local_region": 5, "dim": 16, "depth": 1, "heads": 2},
)  # fmt: skip


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_same_weights(ecg_folder):
    a = train_mmae(TINY, [ecg_folder], progress=False)
    b = train_mmae(TINY, [ecg_folder], progress=False)
    c = train_mmae(dataclasses.replace(TINY, seed=1), [ecg_folder], progress=False)
    assert _same(_weights(a.model), _weights(b.model))
    assert not _same(_weights(a.model), _weights(c.model))
    assert a.spec.training["records"] == ["syn0", "syn1"] and a.spec.training["val_records"] == [
        "syn2"
    ]


def test_resume_continues_to_the_same_weights(ecg_folder, tmp_path, monkeypatch):
    import ecgstream.training.trainer as trainer

    cfg = dataclasses.replace(TINY, patience=99, checkpoint_dir=tmp_path / "ck")
    full = train_mmae(cfg, [ecg_folder], progress=False)
    assert (tmp_path / "ck" / "last.pt").exists() and (tmp_path / "ck" / "model.pt").exists()

    calls = {"n": 0}
    real_validate = trainer.validate

    def interrupted(*args, **kwargs):  # the run dies during epoch 2's validation
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    part = dataclasses.replace(cfg, checkpoint_dir=tmp_path / "ck2")
    monkeypatch.setattr(trainer, "validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_mmae(part, [ecg_folder], progress=False)
    monkeypatch.setattr(trainer, "validate", real_validate)
    resumed = train_mmae(part, [ecg_folder], progress=False, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert _same(_weights(full.model), _weights(resumed.model))


def test_export_parity_metadata_and_scorer(ecg_folder, tmp_path):
    out = tmp_path / "m.onnx"
    res = train_mmae(dataclasses.replace(TINY, model_out=out, name="tiny", version="7"), [ecg_folder],
                     progress=False)  # fmt: skip
    spec = read_spec(out)
    assert (spec.name, spec.version, spec.kind, spec.leads) == ("tiny", "7", "mmae", ["MLII"])
    assert (spec.window, spec.hop, spec.fs) == (400, 200, 100.0)
    assert spec.score_norm["scale"] > 0 and {"default", "warning", "critical"} <= set(
        spec.thresholds
    )
    assert spec.training["seed"] == 0 and spec.training["windows"] > 0
    assert spec == res.spec
    card = out.with_suffix(".md").read_text()
    assert "Not a certified medical device" in card and "sha256" in card
    # real window from a WFDB record written here: eager torch vs ONNX Runtime
    rec = read_record(ecg_folder / "syn2", ["MLII"])
    x, _ = preprocess(rec.signal, rec.fs, spec.preprocess_config)
    windows = frame(x, window_starts(len(x), spec.window, spec.hop), spec.window)
    scorer = Scorer(out)
    p_ort, w_ort = scorer.score_windows(windows)
    with torch.no_grad():
        p_pt, w_pt = res.model(torch.from_numpy(windows))
    assert np.abs(p_ort - p_pt.numpy()).max() <= 1e-4
    assert np.abs(w_ort - w_pt.numpy()).max() <= 1e-4
    scores = scorer.score_record(read_record(ecg_folder / "syn0"))
    assert scores.point_score.shape == (rec.n_samples,) and np.isfinite(scores.window_score).all()


def test_cli_train_and_export_end_to_end(ecg_folder, tmp_path, capsys):
    cfg_file = tmp_path / "tiny.toml"
    cfg_file.write_text(
        "[train]\nwindow_s = 4.0\nhop_s = 2.0\nsteps_per_epoch = 3\nbatch_size = 8\nval_windows = 16\n"
        "threads = 1\n[model]\nsegment = 20\nlocal_region = 5\ndim = 16\nheads = 2\n"
        "[history]\nweight = 2\n"
    )
    out = tmp_path / "cli.onnx"
    rc = main(["train", "--config", str(cfg_file), "--epochs", "1", "--leads", "MLII", "--val-records",
               "syn1", "--model-out", str(out), "--no-progress", "--set", "depth=1",
               str(ecg_folder)])  # fmt: skip
    assert rc == 0 and out.exists() and out.with_suffix(".md").exists()
    assert read_spec(out).training["epochs"] == 1
    params = read_spec(out).params  # [model] and --set reach the model's own config
    assert (params["segment"], params["dim"], params["depth"], params["window"]) == (20, 16, 1, 400)
    # [history] reaches the spec, its gate the calibrated default threshold; a model without a
    # stream step of its own is stepped with its main graph plus the history
    spec = read_spec(out)
    assert spec.history["weight"] == 2.0 and spec.history["gate"] == spec.thresholds["default"]
    stepper = Scorer(out).stepper
    assert stepper is not None and stepper.key == "whole-windows format 1 with history format 1"
    exported = tmp_path / "again.onnx"
    rc = main(["export", str(out.with_suffix(".ckpt")), "--out", str(exported), "--version", "9"])
    assert rc == 0 and read_spec(exported).version == "9"
    assert "wrote" in capsys.readouterr().out


def test_fit_records_helper(ecg_folder, tmp_path):
    path = fit_records([ecg_folder / "syn0", ecg_folder / "syn1"], dataclasses.replace(TINY, epochs=1),
                       tmp_path / "f.onnx", val_records=["syn1"])  # fmt: skip
    assert read_spec(path).training["records"] == ["syn0"]


def test_unknown_lead_is_a_clear_error(ecg_folder, capsys):
    with pytest.raises(RecordError, match="lead 'V9'"):
        train_mmae(dataclasses.replace(TINY, leads=["V9"]), [ecg_folder], progress=False)
    rc = main(["train", "--leads", "V9", "--val-records", "syn2", "--no-progress", str(ecg_folder)])
    assert rc == 2 and "lead 'V9'" in capsys.readouterr().err


def test_record_shorter_than_a_window(tmp_path):
    for i in range(2):
        write_record(tmp_path, f"short{i}", synthetic_ecg(3, 360, seed=i), 360, ["MLII"])
    with pytest.raises(RecordError, match="shorter than one"):
        train_mmae(dataclasses.replace(TINY, val_records=["short1"]), [tmp_path], progress=False)


def test_no_normal_windows(tmp_path):
    import wfdb

    for i in range(2):
        path = write_record(tmp_path, f"pvc{i}", synthetic_ecg(20, 360, seed=i), 360, ["MLII"])
        beats = np.arange(100, 7000, 300)
        wfdb.wrann(path.name, "atr", beats, symbol=["V"] * len(beats), write_dir=str(tmp_path))
    with pytest.raises(NoNormalWindowsError, match="free of abnormal beats"):
        train_mmae(dataclasses.replace(TINY, val_records=["pvc1"]), [tmp_path], progress=False)


def test_unknown_model_kind(ecg_folder, capsys):
    assert main(["train", "--model", "nonesuch", str(ecg_folder)]) == 2
    assert "unknown model kind" in capsys.readouterr().err
    assert Path(ecg_folder).exists()


def test_the_ptbxl_card_counts_the_fitted_population_values():
    """The shipped PTB-XL model fits a population reference: its card says how many values."""
    import onnx
    from onnx import numpy_helper

    from ecgstream.training.export import _fitted_population_values

    shipped = Path(__file__).resolve().parents[2] / "models" / "consensus-ptbxl.onnx"
    spec = read_spec(shipped)

    fitted = sum(
        numpy_helper.to_array(t).size
        for t in onnx.load(str(shipped)).graph.initializer
        if t.name.startswith(("pop_", "spec_"))
    )
    assert _fitted_population_values(spec) == fitted == 212218
    card = shipped.with_suffix(".md").read_text()
    assert "no trained weights" not in card and "212,218 values" in card
