"""Training on one plain series: ``ecgstream train --series FILE --train-end N --model-out PATH``.

The anomaly-free prefix ``[0, train_end)`` of one series (UCR archive layout: one value per
line; also CSV and NPY, several channels allowed) trains an image-method detector on its channel x
time windows. The series has no sampling rate: the model runs at ``fs = 1.0`` with the
preprocessing filter off (an identity preprocessor), and all lengths are in samples. The window
is about two dominant periods of the prefix unless given.

The last fifth of the prefix (when it holds at least 10 windows) is kept out of training and
calibrates the score normalisation and thresholds. Training stops at ``time_budget_s``
(default 30 s) so one model takes under a minute, export included.
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

__all__ = ["SeriesResult", "series_preprocess", "train_series", "train_series_array"]

log = logging.getLogger(__name__)


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


def _train_windows(x: np.ndarray, window: int, max_windows: int) -> np.ndarray:
    stride = max(1, (len(x) - window) // max_windows)
    return frame(x, window_starts(len(x), window, stride), window)


def train_series_array(
    x: np.ndarray,
    train_end: int,
    *,
    kind: str = "uniad",
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

    ``window`` and ``hop`` (scoring hop) are in samples; defaults: :func:`auto_window` and a
    quarter window. ``overrides`` set fields of :class:`~ecgstream.training.image.ImageConfig`.
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
    import torch

    from ecgstream.training.calibration import calibrate
    from ecgstream.training.image import ImageConfig, export_detector, fit_image_detector

    t0 = time.perf_counter()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if not 0 < train_end <= len(x):
        raise SeriesError(f"train_end {train_end} must be within the series' {len(x)} samples")
    prefix = x[:train_end]
    window = int(window or auto_window(prefix))
    hop = int(hop or max(1, window // 4))
    if train_end < 2 * window:
        raise SeriesError(
            f"the anomaly-free prefix ({train_end} samples) must hold at least two {window}-sample "
            "windows; give a shorter --window or a later --train-end"
        )
    n_val = train_end // 5
    fit_part, val_part = (prefix[: train_end - n_val], prefix[train_end - n_val - window // 2 :])
    if len(val_part) < window + 9 * max(1, window // 8) or len(fit_part) < 2 * window:
        fit_part, val_part = prefix, prefix
    train_windows = _train_windows(fit_part, window, max_windows)
    cfg = ImageConfig(
        kind=kind, frontend="channel_time", seed=seed, time_budget_s=time_budget_s, **overrides
    )
    model = fit_image_detector(train_windows, cfg)
    val_windows = frame(val_part, window_starts(len(val_part), window, max(1, window // 8)), window)
    with torch.no_grad():
        _, val_scores = model(torch.from_numpy(val_windows))
    score_norm, thresholds = calibrate(val_scores.numpy())
    seconds = time.perf_counter() - t0
    spec = ModelSpec(
        name=f"{kind}-{name}",
        version="1",
        kind=kind,
        leads=list(
            leads or (["value"] if x.shape[1] == 1 else [f"ch{i}" for i in range(x.shape[1])])
        ),
        window=window,
        hop=hop,
        preprocessing=series_preprocess().to_dict(),
        score_norm=score_norm,
        thresholds=thresholds,
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
        log.info("exported %s (%.1f s)", path, time.perf_counter() - t0)
    return SeriesResult(spec=spec, model_path=path, seconds=time.perf_counter() - t0, model=model)


def train_series(
    path: str | Path,
    train_end: int,
    model_out: str | Path | None = None,
    *,
    kind: str = "uniad",
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
