"""Rank metrics (AUROC, average precision, ROC curve) in numpy, and beat / window scores.

AUROC is the Mann-Whitney statistic with tied scores given their average rank, which equals the
area under the ROC curve drawn with ties as diagonal steps (scikit-learn's ``roc_auc_score``).
Average precision is the step-wise area of scikit-learn's ``average_precision_score``. NaN scores
(samples no window covered) are an error here: callers drop them explicitly.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MetricError",
    "auroc",
    "auroc_interval",
    "average_precision",
    "roc_curve",
    "beat_scores",
    "interval_max",
    "fixed_windows",
]


class MetricError(ValueError):
    """A metric is undefined for the given labels or scores (e.g. only one class)."""


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise MetricError(f"{labels.size} labels but {scores.size} scores")
    if np.isnan(scores).any():
        raise MetricError("scores contain NaN; drop uncovered samples first")
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        raise MetricError(f"need both classes, got {n_pos} positives of {labels.size}")
    return labels, scores


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # boundaries of runs of equal values
    new_run = np.concatenate(([True], sorted_scores[1:] != sorted_scores[:-1]))
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.append(run_start[1:], scores.size)  # exclusive
    avg = (run_start + run_end + 1) / 2.0  # mean of 1-based ranks start+1..end
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[order] = avg[run_id]
    return ranks


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count 1/2.

    >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    labels, scores = _check(labels, scores)
    ranks = _average_ranks(scores)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auroc_interval(
    labels: list[np.ndarray],
    scores: list[np.ndarray],
    level: float = 0.95,
    n_boot: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval of the pooled AUROC over groups (e.g. the excerpts of a localisation
    run): ``n_boot`` times, draw as many groups as there are with replacement and pool their
    points. Points of one group are not independent (one anomaly, one stretch of one record), so
    the group, not the point, is the unit resampled. Returns the ``level`` percentile interval.

    >>> rng = np.random.default_rng(0)
    >>> labels = [rng.random(500) < 0.1 for _ in range(30)]
    >>> scores = [lab + rng.normal(size=500) for lab in labels]
    >>> low, high = auroc_interval(labels, scores)
    >>> bool(low < auroc(np.concatenate(labels), np.concatenate(scores)) < high)
    True
    """
    if len(labels) != len(scores) or not labels:
        raise MetricError(
            f"need matching groups of labels and scores, got {len(labels)} and {len(scores)}"
        )
    _check(np.concatenate(labels), np.concatenate(scores))
    groups = [(np.asarray(g).ravel().astype(bool), np.asarray(s, np.float64).ravel())
              for g, s in zip(labels, scores, strict=True)]  # fmt: skip
    positives = np.concatenate([s[g] for g, s in groups])
    n_pos = np.array([g.sum() for g, _ in groups], dtype=np.float64)
    n_neg = np.array([g.size - g.sum() for g, _ in groups], dtype=np.float64)
    owner = np.repeat(np.arange(len(groups)), n_pos.astype(int))  # each positive's group
    # pairs[i, j]: pairs (positive of group i, negative of group j) ranked right, ties 1/2
    pairs = np.zeros((len(groups), len(groups)))
    for j, (g, s) in enumerate(groups):
        neg = np.sort(s[~g])
        below = np.searchsorted(neg, positives, "left")
        right = below + 0.5 * (np.searchsorted(neg, positives, "right") - below)
        pairs[:, j] = np.bincount(owner, right, minlength=len(groups))
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(groups), np.full(len(groups), 1.0 / len(groups)), size=n_boot)
    right = np.einsum("bi,ij,bj->b", draws, pairs, draws)
    total = (draws @ n_pos) * (draws @ n_neg)
    values = right[total > 0] / total[total > 0]
    if not values.size:
        raise MetricError("no bootstrap draw held both classes")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def _threshold_counts(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true / false positives at each distinct threshold, highest score first."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_run = np.flatnonzero(np.diff(s) != 0)
    idx = np.append(last_of_run, s.size - 1)
    tps = np.cumsum(y)[idx].astype(np.float64)
    fps = (idx + 1 - tps).astype(np.float64)
    return tps, fps, s[idx]


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: sum over thresholds of (recall step) x precision (no interpolation).

    >>> round(average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
    0.8333
    """
    labels, scores = _check(labels, scores)
    tps, fps, _ = _threshold_counts(labels, scores)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    recall_step = np.diff(np.concatenate(([0.0], recall)))
    return float(np.sum(recall_step * precision))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold (starting at (0, 0)), and thresholds."""
    labels, scores = _check(labels, scores)
    tps, fps, thr = _threshold_counts(labels, scores)
    tpr = np.concatenate(([0.0], tps / tps[-1]))
    fpr = np.concatenate(([0.0], fps / fps[-1]))
    return fpr, tpr, np.concatenate(([np.inf], thr))


def interval_max(point_score: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Max of ``point_score`` over each ``[start, end)`` sample interval, ignoring NaN.

    Intervals with no finite score give NaN. Uses a sparse table, so it is
    O(n log n + k) for k intervals.
    """
    x = np.asarray(point_score, dtype=np.float64)
    n = x.size
    starts = np.clip(np.asarray(starts, dtype=np.int64), 0, n)
    ends = np.clip(np.asarray(ends, dtype=np.int64), 0, n)
    out = np.full(starts.shape, np.nan)
    if n == 0 or starts.size == 0:
        return out
    filled = np.where(np.isnan(x), -np.inf, x)
    table = [filled]
    k = 1
    while 2 * k <= n:
        prev = table[-1]
        table.append(np.maximum(prev[:-k], prev[k:]))
        k *= 2
    length = ends - starts
    ok = length > 0
    lvl = np.zeros_like(length)
    lvl[ok] = np.floor(np.log2(length[ok])).astype(np.int64)
    for level in np.unique(lvl[ok]):
        sel = ok & (lvl == level)
        t = table[level]
        span = 1 << int(level)
        out[sel] = np.maximum(t[starts[sel]], t[ends[sel] - span])
    out[np.isneginf(out)] = np.nan
    return out


def beat_scores(
    point_score: np.ndarray, beat_samples: np.ndarray, fs: float, half_width_s: float = 0.15
) -> np.ndarray:
    """Score of each beat: the max point score within +-``half_width_s`` seconds of its annotation.

    ``beat_samples`` and ``point_score`` are at the same rate ``fs`` (Hz). NaN where no sample
    of the interval was scored.
    """
    half = int(round(half_width_s * fs))
    beat_samples = np.asarray(beat_samples, dtype=np.int64)
    return interval_max(point_score, beat_samples - half, beat_samples + half + 1)


def fixed_windows(
    n_samples: int, fs: float, window_s: float = 10.0
) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping ``window_s``-second windows ``[start, end)`` covering a record (last partial one dropped)."""
    w = int(round(window_s * fs))
    if w <= 0:
        raise ValueError(f"window of {window_s} s at {fs} Hz has no samples")
    starts = np.arange(0, n_samples - w + 1, w, dtype=np.int64)
    return starts, starts + w
