"""``ecgstream train --model consensus``: calibrate and export the in-window consensus detector.

The detector (:mod:`ecgstream.models.consensus`) has no trained weights, so "training" reads the
records like MMAE-ECG does, scores the validation records, calibrates the score on their normal
windows (the same false-alarm thresholds as every model) and exports the graph with its spec and
card. The training records are only counted, except by the optional population reference
(fitted on their normal windows) and the optional score refiner (trained on synthetic anomalies
injected into them, :mod:`ecgstream.training.refiner`; it changes point scores only, never the
window scores the thresholds are calibrated on).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ecgstream.runtime.model_file import ModelSpec
from ecgstream.training.calibration import calibrate
from ecgstream.training.config import TrainConfig
from ecgstream.training.data import normal_starts
from ecgstream.training.registry import ModelKind, register
from ecgstream.training.trainer import (
    TrainResult,
    _checkpoint,
    prepare_data,
    record_spec,
    validate,
)

__all__ = ["consensus_config", "fit_consensus", "normal_windows"]


def consensus_config(cfg: TrainConfig):
    """The detector's :class:`~ecgstream.models.consensus.ConsensusConfig`: the ``[model]`` table
    of ``cfg`` with its leads and window (samples at ``cfg.fs``)."""
    if cfg.model != "consensus":
        raise ValueError(f"not a consensus training config: model = {cfg.model!r}")
    return cfg.model_config()


def normal_windows(records, window: int, hop: int, max_windows: int) -> np.ndarray:
    """Normal windows ``(N, L, window)`` float32 of ``records``, every ``hop`` samples, at most ``max_windows``."""
    out = []
    for rec in records:
        starts = normal_starts(rec, window)
        starts = starts[np.unique(starts // hop, return_index=True)[1]]  # about one per hop
        out.extend(rec.x[s : s + window].T for s in starts)
    if not out:
        raise ValueError("no normal training window to fit the population reference on")
    step = max(1, len(out) // max_windows)
    return np.stack(out[::step]).astype(np.float32)


def fit_consensus(
    cfg: TrainConfig, paths: list[str | Path], progress: bool = True, resume: bool = False
) -> TrainResult:
    """Calibrate on validation normals and (if ``cfg.model_out``) export one consensus detector."""
    from ecgstream.models.consensus import SegmentConsensus

    t0 = time.perf_counter()
    import torch

    model = SegmentConsensus(consensus_config(cfg)).eval()
    train_recs, val_recs = prepare_data(cfg, paths, progress)
    n_windows = 0
    if model.cfg.population_components:
        windows = normal_windows(train_recs, cfg.window, cfg.hop, max_windows=20000)
        n_windows = len(windows)
        model.fit_population(torch.from_numpy(windows))
    refiner_summary = None
    if model.refiner is not None:
        from ecgstream.training.refiner import fit_refiner

        refiner_summary = fit_refiner(model, cfg, train_recs, progress)
    empty = np.zeros((0, len(cfg.leads), cfg.window), np.float32)
    figures = validate(model, cfg, val_recs or train_recs, empty)
    figures.pop("val_loss", None)
    normal_scores = figures.pop("normal_scores")
    calibration = [r.name for r in (val_recs or train_recs)]
    if cfg.calibrate_on == "all" and val_recs and train_recs:
        # nothing was fitted on the training records: their normal windows are unseen too, and
        # more patients estimate the population's false-alarm quantile better
        more = validate(model, cfg, train_recs, empty)["normal_scores"]
        normal_scores = np.concatenate([normal_scores, more])
        calibration += [r.name for r in train_recs]
    score_norm, thresholds = calibrate(normal_scores, cfg.false_alarm)
    spec = record_spec(
        cfg,
        "consensus",
        train_recs,
        val_recs,
        score_norm,
        thresholds,
        training={
            "windows": n_windows,
            "epochs": 0,
            "seed": cfg.seed,
            "validation": {k: round(float(v), 4) for k, v in figures.items()},
            "calibration_records": calibration,
            **({"refiner": refiner_summary} if refiner_summary else {}),
            "train_seconds": round(time.perf_counter() - t0, 1),
        },
        params={**model.cfg.to_dict(), "parameters": sum(p.numel() for p in model.parameters())},
    )
    if cfg.checkpoint_dir:
        Path(cfg.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        _checkpoint(Path(cfg.checkpoint_dir) / "model.pt", model=model.state_dict(), spec=spec.to_json(),
                    config=cfg.to_dict())  # fmt: skip
    result = TrainResult(model, spec, [], None, time.perf_counter() - t0)
    if cfg.model_out:
        from ecgstream.training.export import export_model

        result.model_path = export_model(model, spec, cfg.model_out)
    return result


def _load(state: dict):
    from ecgstream.models.consensus import ConsensusConfig, SegmentConsensus

    spec = ModelSpec.from_json(state["spec"])
    model = SegmentConsensus(ConsensusConfig.from_dict(spec.params))
    if state.get("model"):
        model.load_state_dict(state["model"])
    return model.eval()


register(
    ModelKind(
        "consensus",
        fit_consensus,
        _load,
        "in-window consensus of shift-invariant segment descriptors (1-D, WFDB records; no weights "
        "but an optional score refiner)",
    )
)
