"""Fixed-length windows (no R-peak detection) and mapping window scores back to samples."""

from __future__ import annotations

import numpy as np

__all__ = ["window_starts", "frame", "overlap_average", "to_record_rate"]


def window_starts(n_samples: int, window: int, hop: int) -> np.ndarray:
    """Start indices of every full window of ``window`` samples taken every ``hop`` samples.

    The last window is aligned to the end when the hops do not land there exactly, so every
    sample of a signal at least one window long is covered.

    >>> window_starts(10, 4, 3).tolist()
    [0, 3, 6]
    >>> window_starts(11, 4, 3).tolist()
    [0, 3, 6, 7]
    """
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive (got {window}, {hop})")
    if n_samples < window:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(0, n_samples - window + 1, hop, dtype=np.int64)
    if starts[-1] + window < n_samples:
        starts = np.append(starts, n_samples - window)
    return starts


def frame(signal: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Windows of ``signal`` ``(n, leads)`` as ``(n_windows, leads, window)`` float32."""
    view = np.lib.stride_tricks.sliding_window_view(signal, window, axis=0)  # (n-w+1, leads, w)
    return np.ascontiguousarray(view[starts], dtype=np.float32)


def overlap_average(point_scores: np.ndarray, starts: np.ndarray, n_samples: int) -> np.ndarray:
    """Average per-window point scores ``(n_windows, window)`` over overlaps into ``(n_samples,)``.

    Samples covered by no window are NaN.
    """
    window = point_scores.shape[1]
    idx = (starts[:, None] + np.arange(window)[None, :]).ravel()
    # bincount adds in window order, as a loop over windows would
    total = np.bincount(idx, weights=point_scores.ravel(), minlength=n_samples)
    count = np.bincount(idx, minlength=n_samples)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    out[count == 0] = np.nan
    return out


def to_record_rate(
    scores: np.ndarray, fs_model: float, fs_record: float, n_record: int, delay_s: float = 0.0
) -> np.ndarray:
    """Map a model-rate score trace to ``n_record`` samples at ``fs_record`` Hz.

    ``delay_s`` is the causal preprocessing delay: model sample ``k`` shows the record at time
    ``k / fs_model - delay_s``. Linear interpolation; NaN outside the covered range.
    """
    t_record = np.arange(n_record) / fs_record
    pos = (t_record + delay_s) * fs_model
    k = np.arange(len(scores), dtype=np.float64)
    valid = ~np.isnan(scores)
    if not valid.any():
        return np.full(n_record, np.nan)
    out = np.interp(pos, k[valid], scores[valid], left=np.nan, right=np.nan)
    if not valid.all():
        # a sample whose nearest model sample was not covered stays NaN
        nearest = np.clip(np.rint(pos).astype(np.int64), 0, len(scores) - 1)
        out[~valid[nearest]] = np.nan
    out[(pos < 0) | (pos > len(scores) - 1)] = np.nan
    return out
