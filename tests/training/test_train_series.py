"""Generic series end to end: train on a prefix, export, score through the CLI (fs = 1.0)."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ecgstream.cli import main  # noqa: E402
from ecgstream.runtime.model_file import read_spec  # noqa: E402
from ecgstream.signals.series import SeriesError, write_series  # noqa: E402
from ecgstream.training.series import train_series  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small models train far faster on one thread (and the test machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FAST = {
    "encoder_steps": 30,
    "head_steps": 40,
    "batch_size": 16,
    "width": 8,
    "feat_dim": 16,
    "dim": 16,
    "n_centres": 64,
}


def _series(n: int = 4000, period: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (
        np.sin(2 * np.pi * t / period)
        + 0.3 * np.sin(4 * np.pi * t / period)
        + 0.05 * rng.normal(size=n)
    )


def test_train_series_then_score_cli_writes_the_contract(tmp_path):
    x = _series()
    x[3000:3040] = 2.5  # a plateau, far outside the normal range, after train_end
    path = write_series(tmp_path / "demo.txt", x)
    model = tmp_path / "demo.onnx"
    t0 = time.perf_counter()
    result = train_series(
        path, train_end=2000, model_out=model, kind="pbas", time_budget_s=20, **FAST
    )
    assert time.perf_counter() - t0 < 60
    spec = read_spec(model)
    assert (
        spec.fs == 1.0
        and spec.preprocessing["highpass_hz"] == 0
        and spec.preprocessing["lowpass_hz"] == 0
    )
    assert spec.kind == "pbas" and spec.frontend == "channel_time"
    assert spec.window == 80 and spec.training["dominant_period"] == 40  # two periods, automatic
    assert result.spec.training["train_end"] == 2000
    out = tmp_path / "scores"
    assert main(["score", "--model", str(model), "--out", str(out), str(path)]) == 0
    npz = np.load(out / "demo.npz")
    assert float(npz["fs"]) == 1.0 and npz["point_score"].shape == (4000,)
    assert np.isfinite(npz["point_score"]).all()
    assert (npz["window_end"] - npz["window_start"] == spec.window).all()
    assert len(npz["window_score"]) == len(npz["window_start"])
    loc = 2000 + int(np.argmax(npz["point_score"][2000:]))
    assert 2900 <= loc < 3140, f"argmax {loc} should fall on the plateau at 3000-3040"


def test_train_cli_with_series_flag(tmp_path):
    path = write_series(tmp_path / "s.npy", np.stack([_series(2400), _series(2400, seed=1)], 1))
    model = tmp_path / "s.onnx"
    # --series takes the default budget; keep it short through the environment-free API instead
    with pytest.raises(ValueError, match="--train-end"):
        main(["-v", "train", "--series", str(path), "--model-out", str(model)])
    result = train_series(path, 1600, model, kind="uniad", window=64, time_budget_s=15, **FAST)
    assert read_spec(model).leads == ["ch0", "ch1"] and result.spec.window == 64


def test_prefix_too_short_is_a_clear_error(tmp_path):
    path = write_series(tmp_path / "short.txt", _series(500))
    with pytest.raises(SeriesError, match=r"at least two \d+-sample windows"):
        train_series(path, train_end=100, kind="uniad")


def test_image_kind_trains_on_wfdb_records_through_the_registry(tmp_path, ecg_folder):
    model = tmp_path / "pbas.onnx"
    argv = [
        "train",
        "--model",
        "pbas",
        "--leads",
        "MLII",
        "--val-records",
        "syn2",
        "--epochs",
        "1",
        "--set",
        "steps_per_epoch=2",
        "--batch-size",
        "8",
        "--window-s",
        "4",
        "--hop-s",
        "2",
        "--model-out",
        str(model),
        "--no-progress",
        str(ecg_folder),
    ]
    assert main(argv) == 0
    spec = read_spec(model)
    assert spec.kind == "pbas" and spec.frontend == "spectrogram" and spec.params["n_fft"] == 32
    assert "syn2" not in spec.training["records"]
    out = tmp_path / "scores"
    assert main(["score", "--model", str(model), "--out", str(out), str(ecg_folder / "syn0")]) == 0
    npz = np.load(out / "syn0.npz")
    assert float(npz["fs"]) == 360.0 and npz["point_score"].shape == (60 * 360,)
    # the checkpoint re-exports through the registry
    from ecgstream.training.export import export_checkpoint

    again = export_checkpoint(model.with_suffix(".ckpt") / "model.pt", tmp_path / "again.onnx")
    assert read_spec(again).kind == "pbas"


def test_consensus_series_trains_exports_and_finds_the_anomaly(tmp_path):
    """``--series ... --model consensus``: no weights to train, seconds, and the argmax is right."""
    x = _series(6000, period=50, seed=2)
    t = np.arange(100)
    x[4200:4300] = np.sin(2 * np.pi * t / 25)  # two periods at double frequency, same range
    path = write_series(tmp_path / "cons.txt", x)
    model = tmp_path / "cons.onnx"
    t0 = time.perf_counter()
    argv = ["train", "--series", str(path), "--train-end", "3000", "--model", "consensus"]
    assert main([*argv, "--model-out", str(model)]) == 0
    assert time.perf_counter() - t0 < 20
    spec = read_spec(model)
    assert spec.kind == "consensus" and spec.fs == 1.0
    assert spec.params["segment"] == 50 and spec.window == 600  # one period, twelve periods
    assert spec.params["reference_size"] > 0 and spec.training["train_end"] == 3000
    card = model.with_suffix(".md").read_text()  # the series card, not the ECG template
    assert "the first 3000 samples of `cons`" in card and "window 600 samples" in card
    assert "Hz" not in card and "bundle branch" not in card and '"segment": 50' in card
    out = tmp_path / "scores"
    assert main(["score", "--model", str(model), "--out", str(out), str(path)]) == 0
    point = np.load(out / "cons.npz")["point_score"]
    assert point.shape == (6000,) and np.isfinite(point).all()
    loc = 3000 + int(np.argmax(point[3000:]))
    assert 4150 <= loc < 4350, f"argmax {loc} should fall on the anomaly at 4200-4300"


def test_consensus_reference_is_optional_and_scores_seen_segments_near_zero():
    from ecgstream.models.consensus import ConsensusConfig, SegmentConsensus

    plain = SegmentConsensus(ConsensusConfig(window=400, segment=40, stride=5))
    assert not any(k.startswith("reference.") for k in plain.state_dict())  # defaults: none
    cfg = ConsensusConfig(window=400, segment=40, stride=5, consensus_weight=0.0,
                          reference_size=64, reference_quantiles=16, reference_slope_scale=2.0)  # fmt: skip
    model = SegmentConsensus(cfg)
    assert {"reference.desc", "reference.norm"} <= set(model.state_dict())
    seen = torch.from_numpy(_series(400, period=40)[None, None].astype(np.float32))
    assert model.fit_reference(seen) > 1
    with torch.no_grad():
        point_seen, _ = model(seen)
        point_new, _ = model(3 * seen)
    assert float(point_seen.max()) < 1e-3 * float(point_new.min())


def test_consensus_series_reference_exports_with_onnx_parity(tmp_path):
    """The nearest-neighbour reference (and the in-window weight) in the exported graph score as
    the torch model does."""
    from ecgstream.runtime.scorer import Scorer
    from ecgstream.training.series import train_series_array

    x = _series(6000, period=50, seed=3)
    result = train_series_array(x, 3000, kind="consensus", model_out=tmp_path / "ref.onnx")
    model = result.model
    assert model.reference is not None and model.cfg.consensus_weight != 1.0
    window = result.spec.window
    windows = np.stack([x[a : a + window] for a in (3000, 4000, 5000)])[:, None]
    windows = windows.astype(np.float32)
    onnx_point, onnx_window = Scorer(result.model_path).score_windows(windows)
    with torch.no_grad():
        point, score = model(torch.from_numpy(windows))
    np.testing.assert_allclose(onnx_point, point.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(onnx_window, score.numpy(), rtol=1e-4, atol=1e-6)
