"""Score refiner of the consensus detector: what it may change, what it learns, settings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import synthetic_ecg  # noqa: E402

from ecgstream.models.consensus import ConsensusConfig, SegmentConsensus  # noqa: E402
from ecgstream.training import TrainConfig  # noqa: E402
from ecgstream.training.consensus import _load, fit_consensus  # noqa: E402
from ecgstream.training.data import load_record  # noqa: E402
from ecgstream.training.refiner import synthetic_material  # noqa: E402
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


def test_refiner_settings_are_checked():
    with pytest.raises(ValueError, match="^refiner_channels: "):
        ConsensusConfig(refiner_channels=4, population_components=2)
    with pytest.raises(ValueError, match="^refiner_kernel: "):
        ConsensusConfig(refiner_channels=4, refiner_kernel=2)
    with pytest.raises(ValueError, match="^refiner_dilations: "):
        ConsensusConfig(refiner_channels=4, refiner_dilations=(1, 0))
    with pytest.raises(ValueError, match="^refiner_floor_quantile: "):
        TrainConfig(model="consensus", refiner_floor_quantile=1.5)
    cfg = ConsensusConfig.from_dict({**BASE.to_dict(), "refiner_dilations": [1, 3]})
    assert cfg.refiner_dilations == (1, 3)
    # the kernel and the level scale are settings too, used by the refiner
    wide = SegmentConsensus(dataclasses.replace(BASE, refiner_channels=4, refiner_kernel=5,
                                                refiner_level_scale=2.0))  # fmt: skip
    assert wide.refiner.blocks[0].kernel_size == (5,) and wide.refiner.level_scale == 2.0


def _refined(model: dict, **changes) -> TrainConfig:
    """A consensus detector with a score refiner for the synthetic WFDB folder (``syn2``
    validates), with the [model] settings ``model`` and [train] ``changes``."""
    return TrainConfig(
        model="consensus",
        name="refined",
        model_settings={"noise_weight": 100.0, **model},
        leads=["MLII"],
        val_records=["syn2"],
        **changes,
    )


def test_the_refiner_learns_where_synthetic_anomalies_lie_on_an_unseen_record(ecg_folder, tmp_path):
    cfg = _refined(
        {"neighbours": 1, "refiner_channels": 8},
        refiner_excerpts=30,
        refiner_epochs=15,
        refiner_floor_quantile=0.9,
        calibrate_on="all",  # the window scores do not depend on the refiner
        checkpoint_dir=tmp_path / "ckpt",
    )
    result = fit_consensus(cfg, [ecg_folder], progress=False)
    model = result.model
    summary = result.spec.training["refiner"]
    assert summary["windows"] > 100 and 0 < summary["positive_share"] < 0.5
    # held-out material: anomalies injected into the validation record, never trained on
    val = load_record(ecg_folder / "syn2", ["MLII"], preprocess_config(cfg), cfg.window)
    x, y, w = synthetic_material(model, cfg, [val], np.random.default_rng(99))
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


def test_the_refiner_trains_the_same_twice_with_one_seed(ecg_folder):
    cfg = _refined({"refiner_channels": 4}, refiner_excerpts=3, refiner_epochs=2)
    first = fit_consensus(cfg, [ecg_folder], progress=False).model.refiner.state_dict()
    torch.manual_seed(12345)  # a different global generator state when the second model is built
    second = fit_consensus(cfg, [ecg_folder], progress=False).model.refiner.state_dict()
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, rtol=0, atol=0)
