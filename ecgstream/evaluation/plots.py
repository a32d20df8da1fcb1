"""PNG figures of an evaluation: ROC curves per metric, an example record with its score trace,
and one example of each kind of synthetic anomaly with its mask and point scores.

Matplotlib with the non-interactive ``Agg`` backend, so plots render on servers without a display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgstream.evaluation.metrics import MetricError, auroc, roc_curve

__all__ = ["plot_roc", "plot_example", "plot_localisation", "pick_example_span"]

_TITLES = {
    "beat": "Beats (+-150 ms), AAMI abnormal vs normal",
    "window": "10 s windows",
    "record": "Records (max window score)",
    "point": "Localisation: samples in synthetic anomalies",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_roc(collected: dict, path: str | Path) -> Path | None:
    """One ROC panel per metric that has both classes, one curve per score source; None if none."""
    kinds = [k for k in _TITLES if any(c.arrays(k)[0].size for c in collected.values())]
    panels = []
    for kind in kinds:
        curves = []
        for name, c in collected.items():
            labels, scores = c.arrays(kind)
            try:
                fpr, tpr, _ = roc_curve(labels, scores)
                curves.append((name, fpr, tpr, auroc(labels, scores)))
            except MetricError:
                continue
        if curves:
            panels.append((kind, curves))
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (kind, curves) in zip(axes[0], panels, strict=False):
        for name, fpr, tpr, auc in curves:
            ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUROC {auc:.3f})")
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
        ax.set_title(_TITLES[kind], fontsize=9)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_aspect("equal")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pick_example_span(
    abnormal_samples: np.ndarray,
    n_samples: int,
    fs: float,
    span_s: float = 30.0,
    normal_samples: np.ndarray | None = None,
) -> tuple[int, int]:
    """A ``span_s`` second span ``[start, end)`` rich in abnormal beats.

    With ``normal_samples`` the span maximises (abnormal + 1) x (normal + 1) beats, so it shows
    both kinds side by side; otherwise it holds as many abnormal beats as possible.
    """
    span = min(int(round(span_s * fs)), n_samples)
    if len(abnormal_samples) == 0:
        return 0, span
    abnormal_samples = np.sort(np.asarray(abnormal_samples))
    starts = np.clip(abnormal_samples - int(2 * fs), 0, max(n_samples - span, 0))
    n_ab = np.searchsorted(abnormal_samples, starts + span) - np.searchsorted(
        abnormal_samples, starts
    )
    value = n_ab.astype(float)
    if normal_samples is not None and len(normal_samples):
        normal_samples = np.sort(np.asarray(normal_samples))
        n_no = np.searchsorted(normal_samples, starts + span) - np.searchsorted(
            normal_samples, starts
        )
        value = (n_ab + 1.0) * (n_no + 1.0)
    start = int(starts[int(np.argmax(value))])
    return start, start + span


def plot_example(
    signal: np.ndarray,
    fs: float,
    point_scores: dict[str, np.ndarray],
    path: str | Path,
    beat_samples: np.ndarray | None = None,
    beat_abnormal: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    threshold: float | None = None,
    title: str = "",
    span_s: float = 30.0,
) -> Path:
    """The signal (first lead) over one point score panel per source, abnormal beats or a mask marked.

    ``signal`` is ``(n, leads)`` and every trace ``(n,)`` at ``fs`` Hz; the plotted span is the
    ``span_s`` seconds with the most abnormal beats (or the start of the record).
    """
    n = len(signal)
    abnormal = np.asarray([], dtype=np.int64)
    if beat_samples is not None and beat_abnormal is not None:
        abnormal = np.asarray(beat_samples)[np.asarray(beat_abnormal, bool)]
    if mask is not None and mask.any():
        idx = np.flatnonzero(mask)
        a, b = pick_example_span(idx[:1], n, fs, span_s)
    else:
        normal = None
        if beat_samples is not None and beat_abnormal is not None:
            normal = np.asarray(beat_samples)[~np.asarray(beat_abnormal, bool)]
        a, b = pick_example_span(abnormal, n, fs, span_s, normal)
    t = np.arange(a, b) / fs
    plt = _pyplot()
    n_panels = 1 + max(1, len(point_scores))
    fig, axes = plt.subplots(
        n_panels,
        1,
        figsize=(12, 2.2 + 1.6 * n_panels),
        sharex=True,
        height_ratios=[1.3] + [1] * (n_panels - 1),
    )
    ax0 = axes[0]
    ax0.plot(t, signal[a:b, 0], lw=0.7, color="k")
    ax0.set_ylabel("signal")
    if title:
        ax0.set_title(title, fontsize=10)
    for ax in axes:
        for s in abnormal[(abnormal >= a) & (abnormal < b)]:
            ax.axvline(s / fs, color="tab:red", alpha=0.35, lw=3)
        if mask is not None:
            m = mask[a:b]
            ax.fill_between(
                t, 0, 1, where=m, transform=ax.get_xaxis_transform(), color="tab:orange", alpha=0.25
            )
    if beat_samples is not None and beat_abnormal is not None:
        bs = np.asarray(beat_samples)
        sel = (bs >= a) & (bs < b) & ~np.asarray(beat_abnormal, bool)
        ax0.plot(
            bs[sel] / fs, signal[bs[sel], 0], "o", ms=3, color="tab:green", label="normal beat"
        )
        sel_ab = (bs >= a) & (bs < b) & np.asarray(beat_abnormal, bool)
        ax0.plot(
            bs[sel_ab] / fs,
            signal[bs[sel_ab], 0],
            "v",
            ms=5,
            color="tab:red",
            label="abnormal beat (AAMI)",
        )
        ax0.legend(fontsize=7, loc="upper right")
    for i, (ax, (name, trace)) in enumerate(zip(axes[1:], point_scores.items(), strict=False)):
        ax.plot(t, trace[a:b], lw=1, color=f"C{i}", label=name)
        if threshold is not None and i == 0:
            ax.axhline(
                threshold, color="0.4", ls="--", lw=1, label=f"alert threshold {threshold:.3g}"
            )
        ax.set_ylabel("point score")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_localisation(
    examples: dict[str, dict], per_kind: dict[str, dict[str, float | None]], path: str | Path
) -> Path | None:
    """One panel per kind of synthetic anomaly: its example excerpt, the mask, every source's score.

    ``examples`` maps a source name to its ``{kind: LocalisationExample}`` (every source sees the
    same excerpts, so the signal and mask are taken from the first); ``per_kind`` maps a source
    name to its ``{kind: point AUROC}`` over all excerpts, shown in the panel titles. The signal
    (first lead) is drawn on the left axis, the point scores on the right one. None if no source
    has an example.
    """
    kinds = sorted({k for by_kind in examples.values() for k in by_kind})
    if not kinds:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(kinds), 1, figsize=(12, 1.9 * len(kinds) + 0.6), squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds, strict=True):
        shown = [(name, by_kind[kind]) for name, by_kind in examples.items() if kind in by_kind]
        ex = shown[0][1]
        t = (ex.start + np.arange(len(ex.signal))) / ex.fs
        ax.plot(t, ex.signal, lw=0.7, color="k")
        ax.fill_between(
            t, 0, 1, where=ex.mask, transform=ax.get_xaxis_transform(), color="tab:orange",
            alpha=0.3, label="synthetic anomaly (mask)",
        )  # fmt: skip
        ax.set_ylabel("signal", fontsize=8)
        scores = ax.twinx()
        for i, (name, other) in enumerate(shown):
            scores.plot(t, other.score, lw=1.1, color=f"C{i}", label=f"{name} point score")
        scores.set_ylabel("point score", fontsize=8)
        aurocs = ", ".join(
            f"{name} {auc:.3f}" if auc is not None else f"{name} -"
            for name, auc in ((n, per_kind.get(n, {}).get(kind)) for n, _ in shown)
        )
        ax.set_title(
            f"{kind}: record {ex.record} at {t[0]:.0f} s; point AUROC over all {kind} excerpts: "
            f"{aurocs}",
            fontsize=9,
        )
        if kind == kinds[0]:
            handles = ax.get_legend_handles_labels()[0] + scores.get_legend_handles_labels()[0]
            ax.legend(handles=handles, fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time in the record (s)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
