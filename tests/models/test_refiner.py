"""Score refiner of the consensus detector: what it may change, what it learns, settings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import synthetic_ecg  # noqa: E402

from ecgstream.models.consensus import ConsensusConfig, SegmentConsensus  # noqa: E402
from ecgstream.models.refiner import ScoreRefiner  # noqa: E402
from ecgstream.training import TrainConfig  # noqa: E402
from ecgstream.training.consensus import _load, consensus_config, fit_consensus  # noqa: E402
from ecgstream.training.data import load_record  # noqa: E402
from ecgstream.training.refiner import other_amplitudes, synthetic_material  # noqa: E402
from ecgstream.training.trainer import load_checkpoint, preprocess_config  # noqa: E402

BASE = ConsensusConfig(noise_weight=100.0, neighbours=1, rhythm_weight=0.1)


def _windows() -> torch.Tensor:
    x = synthetic_ecg(20.0, 100, heart_rate=70, seed=3)[:, 0]
    x[1250:1320] *= -1.0  # an inverted stretch in the second window
    return torch.from_numpy(np.stack([x[:1000], x[1000:2000]])[:, None].copy())


def test_the_refiner_only_raises_point_scores_and_keeps_the_window_score():
    torch.manual_seed(0)
    plain = SegmentConsensus(BASE).eval()
    refined = SegmentConsensus(dataclasses.replace(BASE, refiner_channels=8)).eval()
    with torch.no_grad():  # an untrained refiner: its logits are far above the floor
        point, window = plain(_windows())
        r_point, r_window = refined(_windows())
        seg_score, ordered, _, _ = refined.scored_segments(_windows())
        logit = refined.refiner.logits(
            refined.refiner.features(seg_score, refined.segment_levels(ordered))
        )
    torch.testing.assert_close(r_window, window)
    assert bool((r_point >= point - 1e-6).all())
    assert float((r_point / point.clamp_min(1e-9)).max()) > 1.5  # it does change them
    # the boost is exp(weight * (logit - floor)) at the segment centres, 1 below the floor
    centres = 40 + 10 * torch.arange(BASE.n_segments)
    boost = torch.exp(0.5 * (logit.clamp_min(-6.0) + 6.0))
    torch.testing.assert_close(r_point[:, centres], seg_score.clamp_min(0) * boost)


def test_a_min_gain_below_one_lets_the_refiner_lower_scores_down_to_it():
    torch.manual_seed(0)
    cfg = dataclasses.replace(BASE, refiner_channels=8, refiner_min_gain=0.25)
    refined = SegmentConsensus(cfg).eval()
    with torch.no_grad():
        seg_score, ordered, _, _ = refined.scored_segments(_windows())
        logit = refined.refiner.logits(
            refined.refiner.features(seg_score, refined.segment_levels(ordered))
        )
        refined.refiner.floor = float(logit.median())  # half the segments below the floor
        r_point, r_window = refined(_windows())
        _, window = SegmentConsensus(BASE).eval()(_windows())
    torch.testing.assert_close(r_window, window)
    centres = 40 + 10 * torch.arange(BASE.n_segments)
    gain = torch.exp(0.5 * (logit - refined.refiner.floor)).clamp_min(0.25)
    torch.testing.assert_close(r_point[:, centres], seg_score.clamp_min(0) * gain)
    ratio = r_point[:, centres] / seg_score.clamp_min(1e-9)
    assert float(ratio.min()) < 0.99 and float(ratio.max()) > 1.01  # lowered and raised
    assert float(ratio.min()) >= 0.25 - 1e-6


def test_refiner_settings_are_checked():
    with pytest.raises(ValueError, match="refiner"):
        ConsensusConfig(refiner_channels=4, population_components=2).validate()
    with pytest.raises(ValueError, match="odd kernel"):
        ScoreRefiner(1, channels=4, kernel=2)
    with pytest.raises(ValueError, match="floor_quantile"):
        TrainConfig(model="consensus", consensus_refiner_floor_quantile=1.5)
    with pytest.raises(ValueError, match="min_gain"):
        TrainConfig(model="consensus", consensus_refiner_min_gain=0.0)
    with pytest.raises(ValueError, match="min_gain"):
        ScoreRefiner(1, channels=4, min_gain=1.5)
    with pytest.raises(ValueError, match="decimation"):
        ScoreRefiner(1, channels=4, waveform_channels=4, waveform_decimate=3)
    with pytest.raises(ValueError, match="two strides"):
        ScoreRefiner(1, channels=4, waveform_channels=4, segment=10, stride=10)
    with pytest.raises(ValueError, match="waveform_channels"):
        ScoreRefiner(1, channels=4, waveform_channels=-1)
    with pytest.raises(ValueError, match="pass the windows"):
        ScoreRefiner(1, channels=4, waveform_channels=4)(torch.rand(1, 93), torch.rand(1, 1, 93))
    cfg = ConsensusConfig.from_dict({**BASE.to_dict(), "refiner_dilations": [1, 3]})
    assert cfg.refiner_dilations == (1, 3)


@pytest.mark.parametrize("decimate", [1, 2])
def test_a_refiner_reading_the_waveform_sees_only_the_samples_around_each_segment(decimate):
    """Its waveform value for a segment depends on the samples within 22 (2 strides plus the
    two 90 ms convolutions) of the segment's centre and on no other."""
    torch.manual_seed(0)
    r = ScoreRefiner(1, channels=4, waveform_channels=4, waveform_decimate=decimate)
    x = torch.randn(1, 1, 1000)
    with torch.no_grad():
        r.wave[2].bias.fill_(10.0)  # no output held at zero by its ReLU, so changes show
        base = r.waveform(x, 93)
        assert tuple(base.shape) == (1, 4, 93)
        for segment in (0, 40, 92):
            centre = 40 + 10 * segment
            far = x.clone()
            far[..., : max(centre - 22, 0)] += 5.0
            far[..., centre + 23 :] -= 5.0
            torch.testing.assert_close(r.waveform(far, 93)[..., segment], base[..., segment])
            near = x.clone()
            near[..., centre - 3 : centre + 3] += 5.0
            assert float((r.waveform(near, 93)[..., segment] - base[..., segment]).abs().sum()) > 0


def test_a_waveform_refiner_trains_on_other_amplitudes_and_polarities():
    torch.manual_seed(0)
    x = torch.randn(400, 1, 1000)
    y = other_amplitudes(x)
    ratio = (y / x)[..., 0, :]
    # one gain per window, the same for every sample
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    gain = ratio[:, 0]
    assert float(gain.abs().min()) >= np.exp(-0.7) - 1e-6
    assert float(gain.abs().max()) <= np.exp(0.7) + 1e-6
    assert float(gain.abs().max()) > 1.8 and float(gain.abs().min()) < 0.55  # the whole range
    assert 0.4 < float((gain < 0).float().mean()) < 0.6  # either polarity


def test_material_keeps_the_windows_for_a_refiner_reading_the_waveform(ecg_folder):
    cfg = _refined(consensus_refiner_channels=4, consensus_refiner_waveform_channels=4)
    model = SegmentConsensus(consensus_config(cfg)).eval()
    rec = load_record(ecg_folder / "syn2", ["MLII"], preprocess_config(cfg), cfg.window)
    x, y, w, windows = synthetic_material(model, cfg, [rec], np.random.default_rng(0))
    assert (
        windows is not None and windows.shape == (len(x), 1, 1000) and windows.dtype == np.float32
    )
    # the features are those of the kept windows
    with torch.no_grad():
        seg_score, ordered, _, _ = model.scored_segments(torch.from_numpy(windows))
        again = model.refiner.features(seg_score, model.segment_levels(ordered))
    torch.testing.assert_close(again, torch.from_numpy(x))


def _refined(**changes) -> TrainConfig:
    """A consensus detector with a score refiner for the synthetic WFDB folder (``syn2``
    validates), with ``changes``."""
    return TrainConfig(
        model="consensus",
        name="refined",
        leads=["MLII"],
        val_records=["syn2"],
        consensus_noise_weight=100.0,
        **changes,
    )


def test_the_refiner_learns_where_synthetic_anomalies_lie_on_an_unseen_record(ecg_folder, tmp_path):
    cfg = _refined(
        consensus_neighbours=1,
        consensus_refiner_channels=8,
        consensus_refiner_excerpts=30,
        consensus_refiner_epochs=15,
        consensus_refiner_floor_quantile=0.9,
        calibrate_on="all",  # the window scores do not depend on the refiner
        checkpoint_dir=tmp_path / "ckpt",
    )
    result = fit_consensus(cfg, [ecg_folder], progress=False)
    model = result.model
    summary = result.spec.training["refiner"]
    assert summary["windows"] > 100 and 0 < summary["positive_share"] < 0.5
    # held-out material: anomalies injected into the validation record, never trained on
    val = load_record(ecg_folder / "syn2", ["MLII"], preprocess_config(cfg), cfg.window)
    x, y, w, windows = synthetic_material(model, cfg, [val], np.random.default_rng(99))
    assert windows is None  # kept only for a refiner that reads the waveform
    with torch.no_grad():
        logit = model.refiner.logits(torch.from_numpy(x))
    keep = w > 0
    p = torch.sigmoid(logit).numpy()[keep].clip(1e-6, 1 - 1e-6)
    labels = y[keep]
    learned = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    base = labels.mean()
    constant = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    assert learned < 0.9 * constant
    # the floor is the 90th percentile of the logits on normal training segments: on the unseen
    # record's normal segments, most logits are at or below it too (boost 1)
    floor = model.refiner.floor
    assert floor == result.spec.params["refiner_floor"] == summary["floor"] != -6.0
    normal_logits = logit.numpy()[keep][labels == 0]
    assert 0.7 < float(np.mean(normal_logits <= floor)) < 1.0
    # the checkpoint gives the same refiner back
    again = _load(load_checkpoint(tmp_path / "ckpt"))
    with torch.no_grad():
        torch.testing.assert_close(again.refiner.logits(torch.from_numpy(x)), logit)


@pytest.mark.parametrize("waveform", [0, 4])
def test_the_refiner_trains_the_same_twice_with_one_seed(ecg_folder, waveform):
    cfg = _refined(
        consensus_refiner_channels=4,
        consensus_refiner_excerpts=3,
        consensus_refiner_epochs=2,
        consensus_refiner_waveform_channels=waveform,  # its training draws amplitudes too
    )
    first = fit_consensus(cfg, [ecg_folder], progress=False).model.refiner.state_dict()
    torch.manual_seed(12345)  # a different global generator state when the second model is built
    second = fit_consensus(cfg, [ecg_folder], progress=False).model.refiner.state_dict()
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, rtol=0, atol=0)
