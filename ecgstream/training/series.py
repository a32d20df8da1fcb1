"""Training on one plain series: ``ecgstream train --series FILE --train-end N --model-out PATH``.

The anomaly-free prefix ``[0, train_end)`` of one series (UCR archive layout: one value per
line; also CSV and NPY, several channels allowed) trains an image-method detector on its channel x
time windows. The series has no sampling rate: the model runs at ``fs = 1.0`` with the
preprocessing filter off (an identity preprocessor), and all lengths are in samples. The window
is about two dominant periods of the prefix unless given.

The last fifth of the prefix (when it holds at least 10 windows) is kept out of training and
calibrates the score normalisation and thresholds. Training stops at ``time_budget_s``
(default 30 s) so one model takes under a minute, export included.

``kind="consensus"`` has nothing to train (:mod:`ecgstream.models.consensus`): segments are one
dominant period long, the window holds several periods, and the descriptors of the prefix are
kept as a nearest-neighbour reference, so each segment is scored against both its own window and
everything normal seen before. It takes seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgstream.runtime.model_file import ModelSpec
from ecgstream.signals.preprocess import PreprocessConfig
from ecgstream.signals.series import SeriesError, auto_window, dominant_period, read_series
from ecgstream.signals.windows import frame, window_starts

__all__ = [
    "SERIES_DEFAULT_KIND",
    "SeriesResult",
    "consensus_sizes",
    "series_preprocess",
    "train_series",
    "train_series_array",
]

log = logging.getLogger(__name__)

#: the kind ``ecgstream train --series`` uses without ``--model``: the one that measures best on
#: UCR dev (docs/model-image.md, "Generic series: the consensus detector")
SERIES_DEFAULT_KIND = "consensus"


def series_preprocess() -> PreprocessConfig:
    """The identity preprocessing of plain series: rate 1.0, no filter."""
    return PreprocessConfig(fs=1.0, highpass_hz=0.0, lowpass_hz=0.0)


@dataclass
class SeriesResult:
    """What :func:`train_series` produced: the model file (if exported), its spec, timing."""

    spec: ModelSpec
    model_path: Path | None
    seconds: float
    model: object = None


def _series_spec(
    kind: str,
    name: str,
    leads: list[str] | None,
    n_channels: int,
    window: int,
    hop: int,
    score_norm: dict,
    thresholds: dict,
    training: dict,
    params: dict,
    **extra,
) -> ModelSpec:
    """The :class:`ModelSpec` of a series model (rate 1.0, identity preprocessing, lengths in samples)."""
    return ModelSpec(
        name=f"{kind}-{name}",
        version="1",
        kind=kind,
        leads=list(
            leads or (["value"] if n_channels == 1 else [f"ch{i}" for i in range(n_channels)])
        ),
        window=window,
        hop=hop,
        preprocessing=series_preprocess().to_dict(),
        score_norm=score_norm,
        thresholds=thresholds,
        training=training,
        params=params,
        **extra,
    )


def _split_prefix(prefix: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitting and validation parts of the anomaly-free ``prefix`` ``(n, channels)``.

    The last fifth validates (from half a window before it); when either part would be too short
    for its windows, both are the whole prefix.
    """
    n = len(prefix)
    if n < 2 * window:
        raise SeriesError(
            f"the anomaly-free prefix ({n} samples) must hold at least two {window}-sample "
            "windows; give a shorter --window or a later --train-end"
        )
    n_val = n // 5
    fit_part, val_part = prefix[: n - n_val], prefix[n - n_val - window // 2 :]
    if len(val_part) < window + 9 * max(1, window // 8) or len(fit_part) < 2 * window:
        return prefix, prefix
    return fit_part, val_part


def _calibrate_on(model, val_part: np.ndarray, window: int) -> tuple[dict, dict]:
    """Score normalisation and thresholds from ``model``'s window scores on ``val_part``
    (windows every eighth of a window, or closer so that there are at least 16)."""
    import torch

    from ecgstream.training.calibration import calibrate

    val_hop = max(1, min(window // 8, (len(val_part) - window) // 16))
    val_windows = frame(val_part, window_starts(len(val_part), window, val_hop), window)
    with torch.no_grad():
        _, val_scores = model(torch.from_numpy(val_windows))
    return calibrate(val_scores.numpy())


def _train_windows(x: np.ndarray, window: int, max_windows: int) -> np.ndarray:
    stride = max(1, (len(x) - window) // max_windows)
    return frame(x, window_starts(len(x), window, stride), window)


def train_series_array(
    x: np.ndarray,
    train_end: int,
    *,
    kind: str = SERIES_DEFAULT_KIND,
    leads: list[str] | None = None,
    name: str = "series",
    window: int | None = None,
    hop: int | None = None,
    time_budget_s: float = 30.0,
    seed: int = 0,
    model_out: str | Path | None = None,
    max_windows: int = 2000,
    **overrides,
) -> SeriesResult:
    """Train one detector on ``x[:train_end]`` (``x`` ``(n,)`` or ``(n, channels)``); export if ``model_out``.

    ``window`` and ``hop`` (scoring hop) are in samples; defaults: :func:`auto_window` (for
    ``consensus``: :func:`consensus_sizes`) and a quarter window. ``overrides`` set fields of
    :class:`~ecgstream.training.image.ImageConfig`, or for ``consensus`` of
    :class:`~ecgstream.models.consensus.ConsensusConfig` and ``periods`` / ``max_window``.
    """
    import torch

    settings = dict(kind=kind, leads=leads, name=name, window=window, hop=hop, time_budget_s=time_budget_s,
                    seed=seed, model_out=model_out, max_windows=max_windows)  # fmt: skip
    threads = torch.get_num_threads()
    # small models train faster on one thread, most of all on a shared machine
    torch.set_num_threads(1)
    try:
        return _train_series_array(x, train_end, overrides, **settings)
    finally:
        torch.set_num_threads(threads)


def _train_series_array(
    x,
    train_end,
    overrides,
    *,
    kind,
    leads,
    name,
    window,
    hop,
    time_budget_s,
    seed,
    model_out,
    max_windows,
) -> SeriesResult:
    from ecgstream.training.export import write_model_card
    from ecgstream.training.image import ImageConfig, export_detector, fit_image_detector

    t0 = time.perf_counter()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if not 0 < train_end <= len(x):
        raise SeriesError(f"train_end {train_end} must be within the series' {len(x)} samples")
    prefix = x[:train_end]
    if kind == "consensus":
        return _train_consensus(x, train_end, overrides, t0, leads=leads, name=name,
                                window=window, hop=hop, model_out=model_out, seed=seed)  # fmt: skip
    window = int(window or auto_window(prefix))
    hop = int(hop or max(1, window // 4))
    fit_part, val_part = _split_prefix(prefix, window)
    train_windows = _train_windows(fit_part, window, max_windows)
    cfg = ImageConfig(
        kind=kind, frontend="channel_time", seed=seed, time_budget_s=time_budget_s, **overrides
    )
    model = fit_image_detector(train_windows, cfg)
    score_norm, thresholds = _calibrate_on(model, val_part, window)
    seconds = time.perf_counter() - t0
    spec = _series_spec(
        kind,
        name,
        leads,
        x.shape[1],
        window,
        hop,
        score_norm,
        thresholds,
        training={
            "series": name,
            "train_end": int(train_end),
            "n_windows": int(len(train_windows)),
            "dominant_period": int(dominant_period(prefix, max_period=max(window, 8))),
            "seconds": round(seconds, 1),
        },
        params={**cfg.to_dict(), **model.frontend.params()},
        frontend="channel_time",
    )
    path = None
    if model_out is not None:
        path = export_detector(model, spec, model_out)
        write_model_card(path, spec)
        log.info("exported %s (%.1f s)", path, time.perf_counter() - t0)
    return SeriesResult(spec=spec, model_path=path, seconds=time.perf_counter() - t0, model=model)


#: defaults of the series consensus detector (tuned on every third UCR dev series)
CONSENSUS_SERIES = {
    "periods": 12.0,
    "segment_periods": 1.0,
    "max_window": 4096,
    "reference_size": 1024,
    "reference_quantiles": 32,
    "reference_slope_scale": 1.0,
    "reference_weight": 1.0,
    "consensus_weight": 0.1,
}


def consensus_sizes(
    prefix: np.ndarray,
    window: int | None,
    periods: float,
    max_window: int,
    segment_periods: float = 1.0,
) -> tuple[int, int, int]:
    """``(window, segment, stride)`` in samples; segment = ``segment_periods`` dominant periods.

    The window holds about ``periods`` segments, at most ``max_window`` samples and at most half
    the prefix (so at least two windows fit in it).
    """
    limit = max(16, min(1000, len(prefix) // 3))
    segment = max(16, round(segment_periods * dominant_period(prefix, max_period=limit)))
    if window is None:
        window = int(min(round(periods * segment), max_window, len(prefix) // 2))
        window = min(max(window, 3 * segment, 256), len(prefix) // 2)
    segment = min(segment, max(2, window // 3))
    stride = max(1, segment // 8)
    return int(window), int(segment), int(stride)


def _segment_rms(prefix: np.ndarray, segment: int) -> float:
    """Median RMS (about the median) of the prefix's segments, over segments and channels."""
    starts = np.arange(0, len(prefix) - segment + 1, max(1, segment // 2))
    seg = prefix[starts[:, None] + np.arange(segment)[None]]  # (n, segment, channels)
    dev = seg - np.median(seg, axis=1, keepdims=True)
    return float(np.median(np.sqrt((dev**2).mean(1)))) or 1.0


def _train_consensus(
    x, train_end, overrides, t0, *, leads, name, window, hop, model_out, seed
) -> SeriesResult:
    import torch

    from ecgstream.models.consensus import ConsensusConfig, SegmentConsensus
    from ecgstream.training.export import export_model

    opts = {**CONSENSUS_SERIES, **overrides}
    prefix = x[:train_end]
    window, segment, stride = consensus_sizes(
        prefix, window, opts.pop("periods"), opts.pop("max_window"), opts.pop("segment_periods")
    )
    hop = int(hop or max(1, window // 4))
    fit_part, val_part = _split_prefix(prefix, window)
    unknown = set(opts) - set(ConsensusConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown consensus setting(s) {sorted(unknown)}")
    opts["reference_quantiles"] = min(int(opts.get("reference_quantiles", 0)), segment)
    if opts.get("reference_slope_scale", 0) > 0:  # steps weighted like values on the prefix
        ratio = _segment_rms(prefix, segment) / _segment_rms(np.diff(prefix, axis=0), segment)
        opts["reference_slope_scale"] = float(opts["reference_slope_scale"] * ratio)
    cfg = ConsensusConfig(n_leads=x.shape[1], window=window, segment=segment, stride=stride, **opts)
    model = SegmentConsensus(cfg).eval()
    # windows every segment overlap by all but one segment, so every prefix segment is described
    fit_windows = frame(
        fit_part, window_starts(len(fit_part), window, max(1, window - segment)), window
    )
    distinct = model.fit_reference(torch.from_numpy(fit_windows), seed=seed)
    if cfg.population_components:
        model.fit_population(torch.from_numpy(fit_windows))
    score_norm, thresholds = _calibrate_on(model, val_part, window)
    seconds = time.perf_counter() - t0
    spec = _series_spec(
        "consensus",
        name,
        leads,
        x.shape[1],
        window,
        hop,
        score_norm,
        thresholds,
        training={
            "series": name,
            "train_end": int(train_end),
            "n_windows": int(len(fit_windows)),
            "reference_descriptors": int(distinct),
            "dominant_period": int(segment),
            "seconds": round(seconds, 1),
        },
        params={**cfg.to_dict(), "parameters": 0},
    )
    path = None
    if model_out is not None:
        path = export_model(model, spec, model_out)
        log.info("exported %s (%.1f s)", path, time.perf_counter() - t0)
    return SeriesResult(spec=spec, model_path=path, seconds=time.perf_counter() - t0, model=model)


def train_series(
    path: str | Path,
    train_end: int,
    model_out: str | Path | None = None,
    *,
    kind: str = SERIES_DEFAULT_KIND,
    window: int | None = None,
    hop: int | None = None,
    time_budget_s: float = 30.0,
    seed: int = 0,
    **overrides,
) -> SeriesResult:
    """Read a series file (``.txt``, ``.csv``, ``.npy``) and train on its first ``train_end`` samples.

    See :func:`train_series_array`; the model is exported to ``model_out`` when given.
    """
    record = read_series(path)
    return train_series_array(
        record.signal,
        train_end,
        kind=kind,
        leads=record.leads,
        name=record.name,
        window=window,
        hop=hop,
        time_budget_s=time_budget_s,
        seed=seed,
        model_out=model_out,
        **overrides,
    )
