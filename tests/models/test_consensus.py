"""In-window consensus detector: shapes, units, what it finds, ONNX parity, and the shipped file."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import REPO, SHIPPED_MODEL, synthetic_ecg  # noqa: E402

from ecgstream.evaluation.metrics import auroc, beat_scores  # noqa: E402
from ecgstream.models.consensus import ConsensusConfig, SegmentConsensus  # noqa: E402
from ecgstream.models.consensus.descriptor import (  # noqa: E402
    centred,
    deviation,
    median_over_segments,
)
from ecgstream.runtime.scorer import Scorer  # noqa: E402
from ecgstream.runtime.stepping.sorts import next_carry, segment_sorts, window_medians  # noqa: E402
from ecgstream.signals.labels import read_beats  # noqa: E402
from ecgstream.signals.records import read_record  # noqa: E402
from ecgstream.training import TrainConfig  # noqa: E402
from ecgstream.training.consensus import fit_consensus  # noqa: E402

FS = 100


def _ecg(seconds: float = 10.0, seed: int = 0) -> np.ndarray:
    return synthetic_ecg(seconds, FS, heart_rate=70, seed=seed)[:, 0]


def _scores(x: np.ndarray, **cfg) -> tuple[np.ndarray, float]:
    model = SegmentConsensus(ConsensusConfig(window=len(x), **cfg)).eval()
    with torch.no_grad():
        point, window = model(torch.tensor(x, dtype=torch.float32)[None, None])
    return point[0].numpy(), float(window[0])


def _r_peaks(x: np.ndarray) -> np.ndarray:
    """Local maxima above half the signal's maximum (test helper only, not used by the model)."""
    high = x > 0.5 * x.max()
    peaks = [i for i in range(1, len(x) - 1) if high[i] and x[i] >= x[i - 1] and x[i] > x[i + 1]]
    return np.array(peaks)


def test_a_wide_ectopic_beat_scores_above_every_normal_beat():
    x = _ecg(10.0)
    peaks = _r_peaks(x)
    victim = peaks[len(peaks) // 2]
    y = x.copy()
    # replace one QRS-T by a wide, tall, opposite-polarity complex (a ventricular-like beat)
    t = np.arange(-15, 45)
    y[victim + t] = -1.6 * np.exp(-((t - 5) ** 2) / (2 * 6.0**2)) + 0.6 * np.exp(
        -((t - 30) ** 2) / (2 * 8.0**2)
    )
    point, _ = _scores(y)
    beat = beat_scores(point, peaks, FS)
    others = np.delete(beat, np.flatnonzero(peaks == victim))
    assert beat[peaks == victim][0] > 2.0 * others.max()


def _ectopic(x: np.ndarray, at: int) -> None:
    """Replace the QRS-T at sample ``at`` by a wide, tall, opposite-polarity complex, in place."""
    t = np.arange(-15, 45)
    x[at + t] = -1.6 * np.exp(-((t - 5) ** 2) / (2 * 6.0**2)) + 0.6 * np.exp(
        -((t - 30) ** 2) / (2 * 8.0**2)
    )


def test_neighbours_keep_the_gaps_of_a_slow_rhythm_low_and_still_see_repeated_ectopic_beats():
    slow = synthetic_ecg(10.0, FS, heart_rate=45, seed=3)[:, 0]
    # every gap between beats (1.3 s) holds segments without a QRS, unlike the median segment
    _, plain = _scores(slow)
    _, near = _scores(slow, neighbours=5)
    assert near < 0.4 * plain
    # two ectopic beats that look alike are each other's nearest segments; what they hold
    # beyond the consensus still counts in full
    x = _ecg(10.0)
    peaks = _r_peaks(x)
    victims = peaks[[3, 7]]
    for at in victims:
        _ectopic(x, at)
    beat = beat_scores(_scores(x, neighbours=1)[0], peaks, FS)
    assert beat[[3, 7]].min() > 2.0 * np.delete(beat, [3, 7]).max()
    # a flat line has no look-alike among the gaps of a regular rhythm
    flat = _ecg(10.0, seed=2)
    flat[400:520] = flat[399]
    point_flat, _ = _scores(flat, neighbours=5)
    assert point_flat[420:500].min() > 3.0 * np.median(point_flat)
    with pytest.raises(ValueError, match="neighbours"):
        ConsensusConfig(neighbours=-1)


def test_scores_are_in_squared_input_units_and_ignore_an_offset():
    x = _ecg(10.0, seed=1)
    point, window = _scores(x)
    point3, window3 = _scores(3.0 * x + 0.7)
    np.testing.assert_allclose(point3, 9.0 * point, rtol=1e-3, atol=1e-7)
    assert window3 == pytest.approx(9.0 * window, rel=1e-3)


def test_a_regular_rhythm_scores_low_everywhere():
    x = _ecg(10.0, seed=2)
    point, _ = _scores(x)
    flat = x.copy()
    flat[400:520] = flat[399]  # a 1.2 s flat line
    point_flat, _ = _scores(flat)
    assert point_flat[420:500].min() > 3.0 * np.median(point)


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"window": 100, "segment": 200}, "segment"),
        ({"window": 100, "segment": 90, "stride": 10}, "at least 3"),
        ({"stride": 0}, "stride"),
        ({"noise_quantile": 0.0}, "noise_quantile"),
        ({"rhythm_weight": -1.0}, "rhythm_weight"),
    ],
)
def test_bad_config_is_a_clear_error(cfg, message):
    with pytest.raises(ValueError, match=message):
        SegmentConsensus(ConsensusConfig(**cfg))


def test_calibrate_export_and_onnx_parity(ecg_folder, tmp_path):
    cfg = TrainConfig(
        model="consensus",
        name="consensus-test",
        leads=["MLII", "V1"],
        window_s=4.0,
        hop_s=2.0,
        val_records=["syn2"],
        model_out=tmp_path / "c.onnx",
    )
    result = fit_consensus(cfg, [ecg_folder], progress=False)
    assert result.model_path.exists() and (tmp_path / "c.md").exists()
    scorer = Scorer(result.model_path)
    assert scorer.spec.kind == "consensus" and scorer.spec.leads == ["MLII", "V1"]
    assert scorer.spec.training["val_records"] == ["syn2"]
    assert scorer.spec.thresholds["default"] > 0
    rng = np.random.default_rng(0)
    windows = (rng.normal(size=(5, 2, cfg.window)) * 0.3).astype(np.float32)
    windows[:, :, :] += synthetic_ecg(4.0, 100, n_leads=2).T[None]
    onnx_point, onnx_window = scorer.score_windows(windows)
    with torch.no_grad():
        point, window = result.model(torch.from_numpy(windows))
    assert np.max(np.abs(onnx_point - point.numpy())) <= 1e-4
    assert np.max(np.abs(onnx_window - window.numpy())) <= 1e-4
    card = (tmp_path / "c.md").read_text()
    assert "consensus" in card and "syn2" in card


@pytest.mark.skipif(not SHIPPED_MODEL.exists(), reason="no shipped model in models/")
def test_shipped_model_finds_the_ectopic_beats_of_the_bundled_excerpt():
    """Record 116 of MIT-BIH (bundled, 180 s, 5 ventricular beats); it was not used to choose the
    detector's settings (those came from records 114 118 124 205 220)."""
    path = REPO / "ecgstream" / "data" / "mitdb" / "116"
    scores = Scorer(SHIPPED_MODEL).score_record(read_record(path))
    beats = read_beats(path)
    s = beat_scores(scores.point_score, beats.samples, scores.fs)
    ok = np.isfinite(s)
    assert beats.abnormal[ok].sum() >= 3
    assert auroc(beats.abnormal[ok], s[ok]) >= 0.95


def test_population_reference_sees_what_is_in_every_beat():
    normal = [synthetic_ecg(10.0, FS, heart_rate=hr, seed=s)[:, 0] for s, hr in
              enumerate((55, 60, 65, 70, 75, 80, 85, 90))]  # fmt: skip
    held_out = _ecg(10.0, seed=11)
    inverted = -held_out  # every beat abnormal: the window's own consensus is inverted too
    cfg = ConsensusConfig(window=1000, population_components=2)
    model = SegmentConsensus(cfg).eval()
    model.fit_population(torch.tensor(np.stack(normal), dtype=torch.float32)[:, None])
    with torch.no_grad():
        x = torch.tensor(np.stack([held_out, inverted]), dtype=torch.float32)[:, None]
        _, window = model(x)
        _, local_only = SegmentConsensus(ConsensusConfig(window=1000)).eval()(x)
    assert window[1] > 3.0 * window[0]
    assert local_only[1] < 3.0 * local_only[0]  # the in-window term alone cannot tell


def test_population_reference_survives_checkpoint_and_export(ecg_folder, tmp_path):
    from ecgstream.training.export import export_checkpoint

    cfg = TrainConfig(
        model="consensus", name="c-pop", leads=["MLII"], window_s=4.0, hop_s=2.0,
        val_records=["syn2"], model_settings={"population_components": 2},
        checkpoint_dir=tmp_path / "ck", model_out=tmp_path / "a.onnx",
    )  # fmt: skip
    result = fit_consensus(cfg, [ecg_folder], progress=False)
    assert result.spec.training["windows"] > 2
    assert float(result.model.population.level.basis.abs().sum()) > 0
    again = export_checkpoint(tmp_path / "ck", tmp_path / "b.onnx")
    windows = synthetic_ecg(4.0, 100, seed=5).T[None].astype(np.float32)
    a = Scorer(result.model_path).score_windows(windows)
    b = Scorer(again).score_windows(windows)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    with pytest.raises(ValueError, match="more than 2 normal windows"):
        SegmentConsensus(ConsensusConfig(window=400, population_components=2)).fit_population(
            torch.zeros(2, 1, 400)
        )


def _contrast(point: np.ndarray, inside, outside) -> float:
    """Mean point score inside an anomaly over the median score far from it."""
    return float(point[inside].mean() / np.median(point[outside]))


def _noise_burst(x: np.ndarray) -> np.ndarray:
    """``x`` with 1 s of 30 uV Gaussian noise from 5 s on (100 Hz)."""
    noisy = x.copy()
    noisy[500:600] += np.random.default_rng(0).normal(0.0, 0.03, 100)
    return noisy


def test_noise_floor_term_finds_a_low_amplitude_noise_burst():
    noisy = _noise_burst(_ecg(10.0, seed=4))
    inside, outside = slice(520, 580), np.r_[0:400, 700:1000]
    contrast_plain = _contrast(_scores(noisy)[0], inside, outside)
    contrast_noise = _contrast(_scores(noisy, noise_weight=100.0)[0], inside, outside)
    assert contrast_noise > 3.0 and contrast_noise > 2.0 * contrast_plain
    with pytest.raises(ValueError, match="noise_quantile"):
        ConsensusConfig(noise_quantile=0.0)


def test_consensus_is_robust_to_a_minority_of_huge_beats():
    x = _ecg(10.0, seed=6)
    peaks = _r_peaks(x)
    y = x.copy()
    for p in peaks[[2, 6]]:  # two of about twelve beats become 10x taller
        y[p - 8 : p + 8] *= 10.0
    clean, _ = _scores(x)
    spiked, _ = _scores(y)
    far = np.ones(len(x), bool)
    for p in peaks[[2, 6]]:
        far[max(0, p - 60) : p + 60] = False  # more than a segment from the huge beats
    assert np.median(spiked[far]) < 1.5 * np.median(clean[far])


def test_noise_floor_ignores_the_qrs_slopes():
    x = _ecg(10.0, seed=7)
    peaks = _r_peaks(x)
    taller = x.copy()
    for p in peaks:
        taller[p - 4 : p + 5] *= 2.0  # steeper QRS slopes, same baseline
    noisy = x + np.random.default_rng(1).normal(0.0, 0.03, len(x))
    model = SegmentConsensus(ConsensusConfig(window=len(x), noise_weight=1.0)).eval()

    def floor(signal):
        with torch.no_grad():
            seg = model.segments(torch.tensor(signal, dtype=torch.float32)[None, None])
            return model.noise.floor(seg).numpy()

    base = floor(x)
    assert np.abs(floor(taller) - base).mean() < 0.2 * np.abs(floor(noisy) - base).mean()


def _fit_with_onnx_parity(
    ecg_folder, tmp_path, windows: np.ndarray, train: dict | None = None, **model
) -> Scorer:
    """Calibrate and export a consensus model (``model``: its [model] settings, ``train``: more
    [train] settings); its ONNX scores of ``windows`` match PyTorch's."""
    cfg = TrainConfig(
        model="consensus",
        name="consensus-test",
        leads=["MLII"],
        val_records=["syn2"],
        model_out=tmp_path / "c.onnx",
        model_settings=model,
        **(train or {}),
    )
    result = fit_consensus(cfg, [ecg_folder], progress=False)
    scorer = Scorer(result.model_path)
    onnx_point, onnx_window = scorer.score_windows(windows)
    with torch.no_grad():
        point, window = result.model(torch.from_numpy(windows))
    assert np.max(np.abs(onnx_point - point.numpy())) <= 1e-4
    assert np.max(np.abs(onnx_window - window.numpy())) <= 1e-4
    return scorer


def _assert_stream_step_matches_main_graph(scorer: Scorer, windows: np.ndarray) -> None:
    """The stream step scores each window from its previous window's carry as the main graph
    scores the whole window."""
    point, window, carried, floors = scorer.stepper.score_windows_carry(windows)
    got_point, got_window, _, _ = scorer.stepper.score_carried(
        windows[1:], carried[:-1], floors[:-1]
    )
    np.testing.assert_allclose(got_point, point[1:], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got_window, window[1:], rtol=1e-5, atol=1e-7)


def _fit_streamed(
    ecg_folder, tmp_path, x: np.ndarray, train: dict | None = None, **model
) -> Scorer:
    """:func:`_fit_with_onnx_parity` on four 10 s windows of ``x`` every 5 s (100 Hz), whose
    stream step then scores each window as the main graph does."""
    windows = np.stack([x[a : a + 1000] for a in (0, 500, 1000, 1500)])[:, None]
    scorer = _fit_with_onnx_parity(ecg_folder, tmp_path, windows, train, **model)
    _assert_stream_step_matches_main_graph(scorer, windows)
    return scorer


@pytest.mark.parametrize("k", [1, 4])
def test_neighbours_export_with_onnx_parity_and_a_stream_step(ecg_folder, tmp_path, k):
    x = synthetic_ecg(25.0, 100, heart_rate=45)[:, 0]
    x[1600:1630] = x[1599]  # a 0.3 s flat line
    scorer = _fit_streamed(ecg_folder, tmp_path, x, noise_weight=100.0, neighbours=k)
    assert scorer.spec.params["neighbours"] == k


@pytest.mark.parametrize("every", [2, 3])
def test_noise_floor_of_every_nth_segment_keeps_the_burst_and_exports(ecg_folder, tmp_path, every):
    x, noisy = _ecg(10.0, seed=4), _noise_burst(_ecg(10.0, seed=4))
    inside, outside = slice(520, 580), np.r_[0:400, 700:1000]
    full = _scores(noisy, noise_weight=100.0)[0]
    sparse = _scores(noisy, noise_weight=100.0, noise_every=every)[0]
    assert _contrast(sparse, inside, outside) > 0.7 * _contrast(full, inside, outside) > 2.0
    # 1 is the default: the same graph
    np.testing.assert_array_equal(_scores(noisy, noise_weight=100.0, noise_every=1)[0], full)
    windows = np.stack([x, noisy])[:, None].astype(np.float32)
    scorer = _fit_with_onnx_parity(
        ecg_folder, tmp_path, windows, noise_weight=100.0, noise_every=every
    )
    assert scorer.spec.params["noise_every"] == every


def test_bad_noise_settings():
    with pytest.raises(ValueError, match="noise_every"):
        ConsensusConfig(noise_every=0)
    with pytest.raises(ValueError, match="noise_weight"):
        ConsensusConfig(noise_weight=-1.0)


@pytest.mark.parametrize(
    "window, segment, stride", [(1000, 80, 10), (1003, 80, 10), (400, 42, 5), (400, 40, 8)]
)
def test_segments_are_the_sliding_windows_of_the_input(window, segment, stride):
    model = SegmentConsensus(
        ConsensusConfig(n_leads=2, window=window, segment=segment, stride=stride)
    )
    x = torch.randn(3, 2, window)
    view = np.lib.stride_tricks.sliding_window_view(x.numpy(), segment, axis=2)[:, :, ::stride]
    np.testing.assert_array_equal(model.segments(x).numpy(), view[:, :, : model.cfg.n_segments])


def test_noise_floor_of_every_2nd_segment_is_interpolated_between_them():
    model = SegmentConsensus(ConsensusConfig(noise_weight=100.0, noise_every=2))
    seg = model.segments(
        torch.tensor(_noise_burst(_ecg(10.0, seed=4)), dtype=torch.float32)[None, None]
    )
    floor = model.noise.floor(seg[:, :, ::2])
    every_2nd = deviation(floor, median_over_segments(floor, floor.shape[2]))[0]
    term = model.noise(model.noise.floors(seg))[0]
    assert model.cfg.n_segments % 2 == 1  # 93: the last segment is one of every 2nd
    torch.testing.assert_close(term[::2], every_2nd)
    torch.testing.assert_close(term[1::2], (every_2nd[:-1] + every_2nd[1:]) / 2)


def test_level_consensus_of_every_nth_segment_scores_every_segment_and_exports(
    ecg_folder, tmp_path
):
    x = _ecg(10.0, seed=4)
    model = SegmentConsensus(ConsensusConfig(level_every=2))
    level, _ = model.descriptors(torch.tensor(x, dtype=torch.float32)[None, None])
    sub = level[:, :, ::2]
    torch.testing.assert_close(
        model.level_consensus(level), median_over_segments(sub, sub.shape[2])
    )
    point, _ = _scores(x, level_every=2)
    assert point.shape == x.shape
    # 1 is the default: the same graph
    np.testing.assert_array_equal(_scores(x, level_every=1)[0], _scores(x)[0])
    with pytest.raises(ValueError, match="level_every"):
        ConsensusConfig(level_every=0)
    windows = np.stack([x, _noise_burst(x)])[:, None].astype(np.float32)
    scorer = _fit_with_onnx_parity(ecg_folder, tmp_path, windows, level_every=2)
    assert scorer.spec.params["level_every"] == 2


@pytest.mark.parametrize(
    "cfg",
    [
        dict(noise_weight=100.0, noise_every=2, level_every=2),  # the shipped configuration
        dict(noise_weight=100.0),
        dict(noise_weight=50.0, consensus_weight=0.5),
        dict(noise_weight=100.0, noise_every=2, level_every=2, neighbours=5),
        dict(noise_weight=150.0, neighbours=1),
    ],
)
def test_stream_step_scores_a_window_from_the_sorts_of_the_previous_one(cfg):
    from ecgstream.models.consensus import StreamStep

    hop = 500
    model = SegmentConsensus(ConsensusConfig(window=1000, **cfg)).eval()
    layout = model.stream_layout(hop)
    assert layout is not None and layout["carry"] == model.cfg.n_segments - hop // 10
    x = _ecg(40.0, seed=2)
    x[2300:2400] += np.random.default_rng(0).normal(0.0, 0.03, 100)  # a noise burst
    windows = torch.tensor(np.stack([x[a : a + 1000] for a in range(0, 3001, hop)]))[:, None]
    step = StreamStep(model, layout)
    spans = windows[1:, :, -layout["span"] :].float().numpy()
    ordered, new_floors = segment_sorts(spans, layout)  # numpy, as the worker does
    with torch.no_grad():
        point, window = model(windows.float())
        model.carry_outputs = layout
        _, _, carried, floors = model(windows.float())
        consensus, floor_consensus = window_medians(
            carried[:-1].numpy(), ordered, floors[:-1].numpy(), new_floors, layout
        )
        # the medians numpy selects are the graph's
        level = centred(torch.cat([carried[:-1], torch.from_numpy(ordered)], dim=2))
        np.testing.assert_array_equal(consensus, model.level_consensus(level).numpy())
        got_point, got_window = step(
            *(torch.from_numpy(a) for a in (ordered, new_floors)),
            carried[:-1],
            floors[:-1],
            *(torch.from_numpy(a) for a in (consensus, floor_consensus)),
        )
    np.testing.assert_allclose(got_point.numpy(), point[1:].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got_window.numpy(), window[1:].numpy(), rtol=1e-5, atol=1e-7)
    # what a window hands over is what the main graph hands over for it
    next_carried, next_floors = next_carry(ordered, new_floors, layout)
    np.testing.assert_array_equal(next_carried, carried[1:].numpy())
    assert layout["floor_mean"] == 0  # the floors are sorted, never their mean
    np.testing.assert_array_equal(next_floors, floors[1:].numpy())


def test_stream_step_only_where_the_carried_sorts_are_the_whole_story():
    def layout(hop=500, **cfg):
        return SegmentConsensus(ConsensusConfig(window=1000, **cfg)).stream_layout(hop)

    assert layout(noise_weight=100.0) is not None
    assert layout() is None  # no noise floor: nothing to save but the sort, not built
    assert layout(noise_weight=100.0, noise_every=3) is None  # 50 segments: off the grid
    assert layout(noise_weight=100.0, hop=505) is None  # not a whole number of strides
    # the nearest-neighbour reference needs the sorted steps, the population the whole window
    assert layout(noise_weight=100.0, reference_size=4) is None
    assert layout(noise_weight=100.0, population_components=2) is None
    # terms computed from the sorted segments, floors and segment scores alone are stepped too
    assert layout(noise_weight=100.0, neighbours=3) is not None
    assert layout(noise_weight=100.0, rhythm_weight=0.1)["rhythm"] == 1


def _premature(x: np.ndarray, peaks: np.ndarray, which: int, early: int) -> np.ndarray:
    """``x`` with beat ``which`` (its whole cycle up to the next beat) moved ``early`` samples
    earlier: a premature beat of normal shape followed by a longer pause."""
    y = x.copy()
    a, b = peaks[which] - 30, peaks[which + 1] - 30
    y[a - early : b - early] = x[a:b]
    y[b - early : b] = x[b - early - 1]  # the pause holds the level before it
    return y


def test_rhythm_term_sees_a_premature_beat_of_normal_shape():
    x = _ecg(10.0, seed=3)
    peaks = _r_peaks(x)
    which = len(peaks) // 2
    y = _premature(x, peaks, which, early=22)  # 0.22 s early at 70 per minute (26 % of a beat)
    beats = peaks.copy()
    beats[which] -= 22
    model = SegmentConsensus(ConsensusConfig(window=len(x), rhythm_weight=1.0, rhythm_every=1))
    with torch.no_grad():
        rhythm = model.rhythm(torch.tensor(y, dtype=torch.float32)[None, None])[0].numpy()
        regular = model.rhythm(torch.tensor(x, dtype=torch.float32)[None, None])[0].numpy()
    # segment scores at segment centres (stride 10, segment 80: centre 40 + 10 i)
    centres = 40 + 10 * np.arange(len(rhythm))
    near = np.abs(centres - beats[which]) <= 20
    far = np.min(np.abs(centres[:, None] - np.delete(beats, [which, which + 1])[None]), 1) <= 20
    assert rhythm[near].max() > 0 and rhythm[near].max() > 3 * rhythm[far].max()
    assert regular.max() < 0.5 * rhythm[near].max()  # a regular rhythm leaves the term near 0

    # in the point score the premature beat stands out much further above the regular beats
    def contrast(point: np.ndarray) -> float:
        score = beat_scores(point, beats, FS)
        return score[which] / np.delete(score, [which, which + 1]).max()

    plain = contrast(_scores(y)[0])
    assert contrast(_scores(y, rhythm_weight=0.1, rhythm_every=1)[0]) > 5.0 > 2.5 > plain
    # compared at every 2nd segment (the shipped model) the beat still stands further out
    assert contrast(_scores(y, rhythm_weight=0.1)[0]) > 1.5 * plain


def test_rhythm_term_settings_are_checked():
    with pytest.raises(ValueError, match="rhythm_weight"):
        ConsensusConfig(rhythm_weight=-1.0)
    with pytest.raises(ValueError, match="^rhythm_max_period: "):
        ConsensusConfig(window=400, rhythm_weight=1.0)  # 1.65 s lags in a 4 s window
    with pytest.raises(ValueError, match="^rhythm_span: "):
        ConsensusConfig(rhythm_weight=1.0, rhythm_span=100)  # longer than a segment
    with pytest.raises(ValueError, match="^rhythm_decimate: "):
        ConsensusConfig(rhythm_weight=1.0, rhythm_decimate=3)  # does not divide the stride
    ConsensusConfig(window=400, rhythm_weight=0.0)  # off: its sizes are not checked


def test_rhythm_term_exports_with_onnx_parity_and_a_stream_step(ecg_folder, tmp_path):
    x = _ecg(25.0, seed=5)
    peaks = _r_peaks(x)
    x = _premature(x, peaks, 12, early=20)
    scorer = _fit_streamed(
        ecg_folder, tmp_path, x, noise_weight=100.0, neighbours=5, rhythm_weight=0.1
    )
    params = scorer.spec.params
    rhythm = ("rhythm_weight", "rhythm_span", "rhythm_max_period", "rhythm_decimate")
    assert tuple(params[k] for k in rhythm) == (0.1, 80, 150, 5)
    assert scorer.stepper is not None and scorer.stepper.layout["rhythm"] == 1


@pytest.mark.parametrize("rhythm, kernel, level_scale", [(0.1, 3, 5.0), (0.0, 5, 2.0)])
def test_refiner_exports_with_onnx_parity_and_a_stream_step(
    ecg_folder, tmp_path, rhythm, kernel, level_scale
):
    x = _ecg(25.0, seed=6)
    x[1230:1300] = -x[1230:1300]  # an inverted stretch
    scorer = _fit_streamed(
        ecg_folder,
        tmp_path,
        x,
        {"refiner_excerpts": 3, "refiner_epochs": 1},
        noise_weight=100.0,
        neighbours=1,
        rhythm_weight=rhythm,
        refiner_channels=4,
        refiner_kernel=kernel,
        refiner_level_scale=level_scale,
    )
    params = scorer.spec.params
    assert params["refiner_channels"] == 4 and params["refiner_kernel"] == kernel
    assert params["refiner_level_scale"] == level_scale
    assert params["parameters"] > 0
    assert scorer.stepper is not None
    # the step takes the whole window where the rhythm term reads it
    assert scorer.stepper.layout["rhythm"] == int(rhythm > 0)


def test_a_format_3_stream_step_without_the_rhythm_term_is_still_used(ecg_folder, tmp_path):
    """Model files exported before the rhythm term (stream step format 3, no ``rhythm`` in its
    layout) keep their stream step."""
    import json

    import onnx

    from ecgstream.runtime.stepping.consensus import STREAM_KEY

    x = _ecg(20.0, seed=6)
    windows = np.stack([x[a : a + 1000] for a in (0, 500, 1000)])[:, None]
    scorer = _fit_with_onnx_parity(ecg_folder, tmp_path, windows, noise_weight=100.0)
    model = onnx.load(str(scorer.model_path))
    entry = next(p for p in model.metadata_props if p.key == STREAM_KEY)
    doc = json.loads(entry.value)
    assert doc["format"] == 4 and doc["rhythm"] == 0
    doc["format"] = 3
    del doc["rhythm"]
    entry.value = json.dumps(doc)
    older = tmp_path / "format3.onnx"
    onnx.save(model, str(older))
    scorer = Scorer(older)
    assert scorer.stepper is not None and scorer.stepper.layout["rhythm"] == 0
    _assert_stream_step_matches_main_graph(scorer, windows)


def _rhythm_reference(
    model: SegmentConsensus, windows: np.ndarray, period_only: bool = False
) -> np.ndarray:
    """:class:`RhythmTerm` before its excess, written out sample by sample
    (``period_only``: the period found in each window, in samples of the envelope)."""
    cfg = model.cfg
    d, lags = cfg.rhythm_decimate, np.array(model.rhythm.lag_list)
    span, step, first, n = cfg.rhythm_span // d, cfg.stride // d, model.rhythm.first, cfg.n_segments
    out = []
    for w in windows:
        x = np.abs(w[0].astype(np.float64)).reshape(-1, d).mean(1)
        dist = np.full((2, len(lags), n), np.inf)
        for i, lag in enumerate(lags):
            for c in range(n):
                a = first + c * step
                box = x[a : a + span]
                for k, b in enumerate((a - lag, a + lag)):
                    if b >= 0 and b + span <= len(x):
                        other = x[b : b + span]
                        energy = (box**2).sum() + (other**2).sum() + 1e-3 * span
                        dist[k, i, c] = ((box - other) ** 2).sum() / energy
        back = np.isfinite(dist[0])
        profile = np.where(back, dist[0], 0).sum(1) / back.sum(1)
        profile[lags * d > cfg.rhythm_max_period] = np.inf
        k = int(np.argmax(profile <= 1.3 * profile.min()))
        while k + 1 < len(lags) and profile[k + 1] < profile[k]:
            k += 1
        if period_only:
            out.append(int(lags[k]))
            continue
        band = np.abs(lags - lags[k]) <= cfg.rhythm_tolerance * lags[k]
        out.append(dist[:, band].min(axis=(0, 1)))
    return np.array(out)


@pytest.mark.parametrize("decimate", [1, 5])
def test_rhythm_term_equals_its_direct_computation(decimate):
    x = np.stack(
        [_ecg(10.0, seed=7), _premature(_ecg(10.0, seed=8), _r_peaks(_ecg(10.0, seed=8)), 5, 20)]
    )
    cfg = ConsensusConfig(
        window=1000, rhythm_weight=1.0, rhythm_decimate=decimate, rhythm_excess=0, rhythm_every=1
    )
    model = SegmentConsensus(cfg).eval()
    with torch.no_grad():
        got = model.rhythm(torch.tensor(x[:, None], dtype=torch.float32)).numpy()
    want = _rhythm_reference(model, x[:, None])
    np.testing.assert_allclose(got, want, atol=2e-6)
    # the excess: above rhythm_excess times the window's median, never below zero
    excess = dataclasses.replace(cfg, rhythm_excess=2.0)
    with torch.no_grad():
        over = SegmentConsensus(excess).rhythm(torch.tensor(x[:, None], dtype=torch.float32))
    median = np.median(want, axis=1, keepdims=True)  # an odd count: the middle value
    np.testing.assert_allclose(over.numpy(), np.maximum(want - 2 * median, 0), atol=2e-6)
    # the gate: the excess fades out linearly as the window's median reaches rhythm_gate
    assert ((median > 0) & (median < 0.1)).all()
    gated = dataclasses.replace(cfg, rhythm_excess=2.0, rhythm_gate=0.1)
    with torch.no_grad():
        faded = SegmentConsensus(gated).rhythm(torch.tensor(x[:, None], dtype=torch.float32))
    np.testing.assert_allclose(
        faded.numpy(), np.maximum(want - 2 * median, 0) * (1 - median / 0.1), atol=2e-6
    )
    shut = dataclasses.replace(gated, rhythm_gate=0.5 * float(median.min()))
    with torch.no_grad():
        assert (
            not SegmentConsensus(shut).rhythm(torch.tensor(x[:, None], dtype=torch.float32)).any()
        )
    # every 2nd segment compared, the ones between interpolated (93 segments: the last is on it)
    every = dataclasses.replace(cfg, rhythm_every=2)
    with torch.no_grad():
        sparse = SegmentConsensus(every).rhythm(torch.tensor(x[:, None], dtype=torch.float32))
    sparse = sparse.numpy()
    np.testing.assert_allclose(sparse[:, ::2], want[:, ::2], atol=2e-6)
    np.testing.assert_allclose(sparse[:, 1::2], (want[:, :-1:2] + want[:, 2::2]) / 2, atol=2e-6)


def test_thresholds_can_be_calibrated_on_every_record_read(ecg_folder, tmp_path):
    """The consensus detector fits nothing on its training records, so their normal windows can
    calibrate the thresholds too (``calibrate_on = "all"``); the validation figures stay on the
    validation records."""
    cfg = TrainConfig(
        model="consensus",
        name="consensus-test",
        leads=["MLII"],
        val_records=["syn2"],
        calibrate_on="all",
        model_out=tmp_path / "all.onnx",
    )
    every = fit_consensus(cfg, [ecg_folder], progress=False)
    only = fit_consensus(
        dataclasses.replace(cfg, calibrate_on="validation", model_out=tmp_path / "val.onnx"),
        [ecg_folder],
        progress=False,
    )
    assert sorted(every.spec.training["calibration_records"]) == ["syn0", "syn1", "syn2"]
    assert only.spec.training["calibration_records"] == ["syn2"]
    # three records of the same length: three times the windows
    assert every.spec.score_norm["n"] == 3 * only.spec.score_norm["n"]
    assert every.spec.training["validation"] == only.spec.training["validation"]
    card = (tmp_path / "all.md").read_text()
    assert "calibration records (3;" in card and "validation records (1;" in card


def test_calibrating_on_training_records_is_refused_where_they_are_fitted():
    with pytest.raises(ValueError, match="calibrate_on: must be"):
        TrainConfig(model="consensus", calibrate_on="everything")
    with pytest.raises(ValueError, match="model = 'mmae'"):
        TrainConfig(model="mmae", calibrate_on="all")
    with pytest.raises(ValueError, match="population reference"):
        TrainConfig(
            model="consensus", calibrate_on="all", model_settings={"population_components": 4}
        )
