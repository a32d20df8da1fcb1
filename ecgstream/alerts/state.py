"""Turning window scores into alerts: one small state machine per stream.

An ECG anomaly alert opens when ``min_windows`` consecutive windows score at or above the
threshold (calibrated units, the model's own by default), stays open while scores stay above
``threshold - hysteresis``, and after it closes no new one opens for ``cooldown_s`` seconds.
One alert is emitted per episode, when it opens. Its id is a hash of (stream, first window
index, model name and version, kind), so a redelivered chunk that produces the same episode
produces the same id and a receiver can de-duplicate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Alert",
    "AlertConfig",
    "AnomalyMachine",
    "alert_id",
    "severity_of",
    "localise",
    "iso_time",
]

KIND_ANOMALY = "anomaly"


def alert_id(stream: str, start_index: int, model: str, version: str, kind: str) -> str:
    """Deterministic alert id: the same stream, start index, model and kind give the same id."""
    digest = hashlib.sha256(f"{stream}\x1f{start_index}\x1f{model}\x1f{version}\x1f{kind}".encode())
    return "alert_" + digest.hexdigest()[:32]


def iso_time(t: float) -> str:
    """Seconds since the epoch as an ISO 8601 UTC string with milliseconds."""
    return (
        dt.datetime.fromtimestamp(t, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@dataclass(frozen=True)
class AlertConfig:
    """Alert policy; scores and margins are in calibrated units, times in seconds.

    ``threshold`` None means the model's calibrated threshold (and its ``critical`` threshold, if
    it has one, marks ``critical`` alerts); otherwise ``critical_margin`` is how far above the
    threshold a score becomes ``critical`` (else ``warning``).
    """

    threshold: float | None = None
    min_windows: int = 2
    hysteresis: float = 0.5
    cooldown_s: float = 10.0
    critical_margin: float = 2.0
    adaptive: bool = False
    adaptive_quantile: float = 0.99
    adaptive_window: int = 300
    drift: bool = False


@dataclass
class Alert:
    """One alert as delivered (see :meth:`to_dict` for the JSON)."""

    id: str
    kind: str
    stream: str
    start_s: float
    end_s: float
    score: float
    threshold: float
    severity: str
    model: str
    version: str
    window_index: int
    spans: list[list[float]] = field(default_factory=list)
    leads: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def category(self) -> str:
        if self.kind == KIND_ANOMALY:
            return "ecg.anomaly"
        return "model.drift" if self.kind == "drift" else "signal.technical"

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "type": self.category,
            "kind": self.kind,
            "stream": self.stream,
            "start": iso_time(self.start_s),
            "end": iso_time(self.end_s),
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "score": _num(self.score),
            "threshold": _num(self.threshold),
            "severity": self.severity,
            "localisation": {
                "spans": [[round(a, 3), round(b, 3)] for a, b in self.spans],
                "leads": self.leads,
            },
            "model": {"name": self.model, "version": self.version},
            "window_index": int(self.window_index),
            "detail": self.detail,
        }


def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else round(float(x), 4)


def severity_of(
    score: float, threshold: float, critical_margin: float, critical: float | None = None
) -> str:
    """``critical`` at or above the ``critical`` threshold (the model's, when it has one above
    ``threshold``), else at ``threshold + critical_margin``; otherwise ``warning``."""
    if critical is not None and critical > threshold:
        return "critical" if score >= critical else "warning"
    return "critical" if score >= threshold + critical_margin else "warning"


def localise(
    point: np.ndarray,
    t_start: float,
    fs: float,
    threshold: float,
    max_spans: int = 3,
    min_gap_s: float = 0.1,
) -> list[list[float]]:
    """Time spans (s) where the calibrated point score ``point`` of a window is highest.

    Runs at or above ``threshold`` are merged across gaps shorter than ``min_gap_s`` and the
    ``max_spans`` with the largest peak are returned; when no sample reaches the threshold, the
    span around the single highest sample (+-0.1 s) is returned.
    """
    point = np.nan_to_num(np.asarray(point, np.float64), nan=-np.inf)
    if len(point) == 0:
        return []
    above = point >= threshold
    if not above.any():
        i = int(np.argmax(point))
        return [[t_start + max(i / fs - 0.1, 0.0), t_start + min(i / fs + 0.1, len(point) / fs)]]
    edges = np.diff(np.concatenate(([0], above.astype(np.int8), [0])))
    starts, ends = list(np.flatnonzero(edges == 1)), list(np.flatnonzero(edges == -1))
    gap = int(min_gap_s * fs)
    merged: list[list[int]] = []
    for a, b in zip(starts, ends, strict=True):
        if merged and a - merged[-1][1] <= gap:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    merged.sort(key=lambda ab: -point[ab[0] : ab[1]].max())
    return [[t_start + a / fs, t_start + b / fs] for a, b in sorted(merged[:max_spans])]


class AnomalyMachine:
    """Per-stream alert state for ECG anomaly windows (see the module docstring).

    ``threshold`` is the base threshold (calibrated units); with ``cfg.adaptive`` the effective
    threshold is the larger of it and a rolling quantile of the stream's own recent scores.
    Windows are identified by ``k`` (e.g. their start sample); consecutive windows differ by
    ``step``.
    """

    def __init__(
        self,
        stream: str,
        cfg: AlertConfig,
        threshold: float,
        model: str,
        version: str,
        leads: list[str],
        step: int = 1,
        critical: float | None = None,
    ):
        self.stream, self.cfg = stream, cfg
        self.base = float(threshold)
        self.model, self.version, self.leads = model, version, list(leads)
        self.step = step
        self.critical = critical
        self.pending: list[tuple[int, float, float, float, np.ndarray]] = []
        self.active = False
        self.active_k = -1
        self.last_k = -(2**62)
        self.cooldown_until = -math.inf
        self.quantile = None
        self.n_scores = 0
        self.drift = None
        if cfg.adaptive:
            from river import stats

            self.quantile = stats.RollingQuantile(
                q=cfg.adaptive_quantile, window_size=cfg.adaptive_window
            )
        if cfg.drift:
            from river import drift

            self.drift = drift.ADWIN()

    @property
    def needs_every_window(self) -> bool:
        """True when every score must be fed (adaptive threshold or drift detection learn from it)."""
        return self.quantile is not None or self.drift is not None

    def skip(self, k: int) -> None:
        """Windows up to ``k`` scored below threshold with nothing pending: only note the index."""
        self.last_k = k

    @property
    def threshold(self) -> float:
        if self.quantile is not None and self.n_scores >= self.cfg.adaptive_window // 4:
            q = self.quantile.get()
            if q is not None:
                return max(self.base, float(q))
        return self.base

    def update(
        self, k: int, score: float, t_start: float, t_end: float, point: np.ndarray, fs: float
    ) -> list[Alert]:
        """Feed window ``k`` (calibrated ``score``, ``point`` scores, times in s); returns new alerts."""
        out: list[Alert] = []
        thr = self.threshold
        if k != self.last_k + self.step:
            self.pending.clear()  # windows missing in between (gap or suppressed): start over
        self.last_k = k
        if self.active:
            if score < thr - self.cfg.hysteresis:
                self.active = False
                self.cooldown_until = t_end + self.cfg.cooldown_s
        elif score >= thr and t_start >= self.cooldown_until:
            self.pending.append((k, score, t_start, t_end, point))
            if len(self.pending) >= self.cfg.min_windows:
                out.append(self._open(thr, fs))
        else:
            self.pending.clear()
        self._learn(k, score, t_start, t_end)
        if self.drift is not None and self.drift.drift_detected:
            out.append(self._drift_alert(k, score, t_start, t_end))
        return out

    def _learn(self, k: int, score: float, t_start: float, t_end: float) -> None:
        if not math.isfinite(score):
            return
        self.n_scores += 1
        if self.quantile is not None:
            self.quantile.update(score)
        if self.drift is not None:
            self.drift.update(score)

    def _open(self, thr: float, fs: float) -> Alert:
        k0 = self.pending[0][0]
        best = max(self.pending, key=lambda p: p[1])
        _, score, t_start, _, point = best
        spans = localise(point, t_start, fs, thr)
        self.active, self.active_k = True, k0
        alert = Alert(
            id=alert_id(self.stream, k0, self.model, self.version, KIND_ANOMALY),
            kind=KIND_ANOMALY,
            stream=self.stream,
            start_s=self.pending[0][2],
            end_s=self.pending[-1][3],
            score=score,
            threshold=thr,
            severity=severity_of(score, thr, self.cfg.critical_margin, self.critical),
            model=self.model,
            version=self.version,
            window_index=k0,
            spans=spans,
            leads=self.leads,
            detail=f"{len(self.pending)} consecutive windows at or above {thr:.2f}",
        )
        self.pending.clear()
        return alert

    def _drift_alert(self, k: int, score: float, t_start: float, t_end: float) -> Alert:
        return Alert(
            id=alert_id(self.stream, k, self.model, self.version, "drift"),
            kind="drift",
            stream=self.stream,
            start_s=t_start,
            end_s=t_end,
            score=score,
            threshold=self.threshold,
            severity="info",
            model=self.model,
            version=self.version,
            window_index=k,
            detail="the stream's score distribution changed (ADWIN); the model may no longer fit it",
        )
