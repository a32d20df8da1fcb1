"""The cross-validation protocol: folds, per-class figures on annotated records, and TEST refusal.

Records are real WFDB files written from neurokit2 ECG with inserted abnormal beats; models are
real ONNX files scored by ONNX Runtime (the segment-energy reference stands in for a trained
model where a test needs known scores, since its scores follow the inserted beats' size).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecgstream.evaluation.baselines import fit_energy_on_records
from ecgstream.evaluation.crossval import (
    LeakError,
    class_aurocs,
    cross_validate,
    fold_config,
    mitdb_cv,
    report_on_test,
    spread,
)
from ecgstream.evaluation.splits import (
    MITDB_DEV,
    MITDB_TEST,
    PTBXL_CV_FOLDS,
    mitdb_cv_folds,
    mitdb_paths,
    ptbxl_cv_folds,
)
from ecgstream.runtime.model_file import ModelSpec

FS = 360


@pytest.mark.parametrize("folds, everything", [(mitdb_cv_folds(), set(MITDB_DEV)),
                                               (ptbxl_cv_folds(), set(PTBXL_CV_FOLDS))])  # fmt: skip
def test_folds_score_every_record_once_and_never_one_they_trained_on(folds, everything):
    held = [r for f in folds for r in f.held_out]
    assert sorted(held) == sorted(everything)  # every record scored, once
    for f in folds:
        train, val, out = set(f.train), set(f.val), set(f.held_out)
        assert not (train & out) and not (val & out) and not (train & val)
        assert train | val | out == everything
    assert not set(held) & set(MITDB_TEST)


def test_every_fold_holds_each_ectopic_class():
    """The fixed DS1 folds were stratified by class: each holds S, V and F beats."""
    from ecgstream.signals.labels import read_beats

    folder = Path(__file__).resolve().parents[3] / "shared" / "data" / "mitdb-ds1"
    if not folder.exists():
        pytest.skip("MIT-BIH DS1 not on this machine")
    for fold in mitdb_cv_folds():
        symbols = np.concatenate([read_beats(folder / r).symbols for r in fold.held_out])
        for members in ("AaJS", "VE", "F"):
            assert np.isin(symbols, list(members)).any(), (fold, members)


def test_cross_validation_refuses_test_records(tmp_path):
    with pytest.raises(ValueError, match="TEST"):
        mitdb_cv_folds((("108", "109"), ("112", "101"), ("114",)))
    # refused before any record is read or model trained (the folder does not even exist)
    with pytest.raises(LeakError, match=r"\['101'\]"):
        mitdb_cv(None, tmp_path / "nowhere", tmp_path, folds=(("108",), ("101",), ("112",)))


def test_fold_config_replaces_the_tomls_records(tmp_path):
    toml = tmp_path / "m.toml"
    toml.write_text('[train]\nmodel = "consensus"\nname = "c"\nrecords = ["108", "101"]\n'
                    'val_records = ["101"]\n[model]\nrefiner_channels = 4\n')  # fmt: skip
    fold = mitdb_cv_folds()[0]
    cfg = fold_config(toml, fold, "mitdb", seed=3, rhythm_weight=0.2)
    assert sorted(cfg.records) == sorted(fold.train + fold.val)
    assert cfg.val_records == list(fold.val) and cfg.seed == 3
    # the rest of the TOML is kept, [model] included, and flags reach either table
    settings = cfg.model_config()
    assert settings.refiner_channels == 4 and settings.rhythm_weight == 0.2
    ptb = fold_config(toml, ptbxl_cv_folds()[2], "ptbxl")
    assert ptb.ptbxl_train_folds == [1, 2, 5, 6, 7, 8] and ptb.ptbxl_val_folds == [4]
    assert ptb.records == [] and ptb.val_records == []


def _annotated_record(folder: Path, name: str, seed: int) -> Path:
    """45 s of ECG, normal for the first 20 s (the references' training windows); after that
    every 5th beat tripled in size (V), every 7th shrunk to 0.4 (F) and every 6th labelled
    supraventricular but left unchanged (A); annotated in ``<name>.atr``."""
    import wfdb
    from conftest import synthetic_ecg, write_record
    from scipy.signal import find_peaks

    x = synthetic_ecg(45, FS, heart_rate=72, seed=seed)[:, 0].astype(np.float64)
    low, high = np.percentile(x, [0.5, 99.5])
    peaks, _ = find_peaks(x, distance=int(0.4 * FS), prominence=0.5 * (high - low))
    symbols = np.full(len(peaks), "N")
    symbols[::6], symbols[::7], symbols[::5] = "A", "F", "V"
    symbols[peaks < 20 * FS] = "N"
    for r, s in zip(peaks, symbols, strict=True):
        gain = {"V": 3.0, "F": 0.4}.get(str(s))
        if gain:
            a, b = max(r - int(0.15 * FS), 0), r + int(0.25 * FS)
            x[a:b] = x[a] + gain * (x[a:b] - x[a])
    path = write_record(folder, name, x[:, None].astype(np.float32), FS, ["MLII"])
    wfdb.wrann(name, "atr", peaks, symbols, fs=FS, write_dir=str(folder))
    return path


@pytest.fixture(scope="module")
def annotated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("annotated")
    for seed, name in zip((0, 1, 2, 4), ("108", "109", "112", "101"), strict=True):
        _annotated_record(folder, name, seed)  # (seed 3's R peaks are not all found)
    return folder


def _spec() -> ModelSpec:
    return ModelSpec(name="m", version="1", kind="x", leads=["MLII"], window=1000, hop=500,
                     preprocessing={"fs": 100.0, "highpass_hz": 0.5, "lowpass_hz": 40.0})  # fmt: skip


def test_per_class_auroc_orders_the_classes_as_the_beats_were_made(annotated, tmp_path):
    """Energy scores: tripled beats (V) rank above all, unchanged ones (S) near chance, shrunk
    ones (F) below the normal beats; pooled over folds as over one set; every record scored
    once by a model that did not train on it."""
    folds = mitdb_cv_folds((("108",), ("109",), ("112",)))

    def train(fold) -> Path:  # a stand-in for training: the energy score, calibrated on the fold
        paths = mitdb_paths(annotated, [*fold.train, *fold.val])
        return fit_energy_on_records(paths, _spec(), tmp_path / f"m{fold.index}.onnx")

    result = cross_validate(folds, train, lambda f: mitdb_paths(annotated, f.held_out),
                            lambda f, m: mitdb_paths(annotated, f.train), tmp_path)  # fmt: skip
    assert [f["held_out"] for f in result["folds"]] == [["108"], ["109"], ["112"]]
    model = result["summary"]["model"]
    assert model["V"]["pooled"] > 0.95 and model["V"]["min"] > 0.95
    assert 0.3 < model["S"]["pooled"] < 0.7
    assert model["F"]["pooled"] < 0.1
    assert model["V"]["pooled"] > model["beat"]["pooled"] > model["F"]["pooled"]
    assert model["beat"]["n_folds"] == 3 and model["window_10s"]["pooled_n"] > 0
    assert set(result["summary"]) == {"model", "pca", "energy"}
    # the energy reference is the same score: the same figures, fold by fold
    for f in result["folds"]:
        assert f["figures"]["energy"]["V"]["auroc"] == pytest.approx(
            f["figures"]["model"]["V"]["auroc"]
        )


def test_a_fold_model_that_saw_its_held_out_record_is_refused(annotated, tmp_path):
    folds = mitdb_cv_folds((("108",), ("109",), ("112",)))
    leaked = fit_energy_on_records(mitdb_paths(annotated, ["108", "109"]), _spec(),
                                   tmp_path / "leaked.onnx")  # fmt: skip
    with pytest.raises(LeakError, match="108"):
        cross_validate(folds, lambda f: leaked, lambda f: mitdb_paths(annotated, f.held_out),
                       lambda f, m: [], tmp_path)  # fmt: skip


def test_test_mode_refuses_a_model_trained_on_a_test_record(annotated, tmp_path):
    bad = fit_energy_on_records(
        mitdb_paths(annotated, ["108", "101"]), _spec(), tmp_path / "b.onnx"
    )
    with pytest.raises(LeakError, match="101"):
        report_on_test(bad, annotated, tmp_path, records=("101",))
    good = fit_energy_on_records(mitdb_paths(annotated, ["108"]), _spec(), tmp_path / "g.onnx")
    report = report_on_test(good, annotated, tmp_path, records=("101",))
    assert report["training"]["records"] == ["108"]
    assert report["figures"]["model"]["V"]["auroc"] > 0.95
    assert report["figures"]["model"]["V"]["n"] == report["figures"]["energy"]["V"]["n"] > 5


def test_class_aurocs_and_spread():
    symbols = np.array(list("NNNNAVFV"))
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.25, 0.9, 0.0, 0.8])
    out = class_aurocs(symbols, scores)
    assert out["S"]["auroc"] == pytest.approx(0.5) and out["S"]["n"] == 1
    assert out["V"]["auroc"] == 1.0 and out["F"]["auroc"] == 0.0 and out["V"]["n_normal"] == 4
    assert class_aurocs(np.array(list("NN")), np.array([0.1, 0.2]))["V"]["auroc"] is None
    s = spread([0.5, None, 0.7])
    assert s["n_folds"] == 2 and s["mean"] == pytest.approx(0.6) and s["min"] == 0.5
    assert s["std"] == pytest.approx(0.1)
