"""Turning window scores into alerts: one small state machine per stream.

An ECG anomaly alert has a lifecycle, like an Alertmanager alert or an IEC 60601-1-8 alarm
condition, and every change of state is its own message (see docs/wire-format.md, "Alerts"):

- ``firing``: ``min_windows`` consecutive windows scored at or above the threshold (calibrated
  units, the model's own by default); ``start`` is the first window's start.
- ``escalated``: while open, the severity rose: a window at or above the ``critical`` threshold,
  or the episode stayed above the threshold for ``sustain_s`` seconds (``sustained``).
- ``updated``: while open, a window above the threshold localised new spans outside the ones
  already reported, or (with ``rise`` set) scored at least ``rise`` times the alert's peak so
  far (at most one such message every ``update_s`` seconds).
- ``resolved``: a window fell below ``threshold - hysteresis``; ``end`` is the end of the last
  window above it. No new alert of the same or a lower severity opens for ``cooldown_s``
  seconds; a more severe one does (cooldown never hides a worse event), and so does one whose
  window scores reach ``cooldown_rise`` times the resolved alert's peak (with it set).

The alert id (``alert_id``) is a hash of (stream, first window index, model name and version,
kind) and stays the same through the lifecycle; each message's ``id`` is ``<alert id>.<n>``
(``n`` = 0 for ``firing``, counting the alert's changes), so a redelivered chunk produces the
same messages with the same ids and receivers de-duplicate per change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Alert",
    "AlertConfig",
    "AnomalyMachine",
    "alert_id",
    "alert_policy",
    "check_fields",
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


SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
#: Message statuses, in lifecycle order (``updated`` and ``escalated`` may repeat).
STATUSES = ("firing", "updated", "escalated", "resolved")


@dataclass(frozen=True)
class AlertConfig:
    """Alert policy; scores and margins are in calibrated units, times in seconds.

    ``threshold`` None means the model's calibrated threshold (and its ``critical`` threshold, if
    it has one, marks ``critical`` alerts); otherwise ``critical_margin`` is how far above the
    threshold a score becomes ``critical`` (else ``warning``). An open alert escalates to
    ``critical`` once it has stayed above the threshold for ``sustain_s`` seconds (0: never),
    and reports newly localised spans at most every ``update_s`` seconds. ``rhythm`` turns on
    the rhythm alerts (:mod:`ecgstream.alerts.rhythm`) with their thresholds ``rhythm_config``
    (a :class:`~ecgstream.alerts.rhythm.RhythmConfig`; None: its defaults). A value out of range
    is a ``ValueError`` naming the field. ``rise`` (0: off) is how many times the peak score
    of an open alert a window must reach to be news (an ``updated`` message, at most every
    ``update_s``); ``cooldown_rise`` (0: off) how many times a resolved alert's peak opens a
    new alert of the same severity inside its cooldown.
    """

    threshold: float | None = None
    min_windows: int = 2
    hysteresis: float = 0.5
    cooldown_s: float = 10.0
    critical_margin: float = 2.0
    sustain_s: float = 30.0
    update_s: float = 10.0
    adaptive: bool = False
    adaptive_quantile: float = 0.99
    adaptive_window: int = 300
    drift: bool = False
    rhythm: bool = True
    rhythm_config: Any = None
    rise: float = 0.0
    cooldown_rise: float = 0.0

    def __post_init__(self) -> None:
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number or unset, got {self.threshold!r}")
        check_fields(
            self,
            min_windows=(1, None),
            hysteresis=(0.0, None),
            cooldown_s=(0.0, None),
            critical_margin=(0.0, None),
            sustain_s=(0.0, None),
            update_s=(0.0, None),
            adaptive_quantile=(0.0, 1.0),
            adaptive_window=(1, None),
            rise=(0.0, None),
            cooldown_rise=(0.0, None),
        )
        for name in ("rise", "cooldown_rise"):
            if 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be 0 (off) or above 1, got {getattr(self, name)!r}")
        if self.critical_margin == 0:
            raise ValueError("critical_margin must be above 0, got 0")


def check_fields(obj: Any, **bounds: tuple[float | None, float | None]) -> None:
    """Raise ``ValueError`` naming the first field of ``obj`` that is not a finite number within
    its inclusive ``(low, high)`` bounds (None: unbounded)."""
    for name, (low, high) in bounds.items():
        value = getattr(obj, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            rng = (
                f"between {low:g} and {high:g}"
                if low is not None and high is not None
                else f"at least {low:g}"
                if low is not None
                else f"at most {high:g}"
            )
            raise ValueError(f"{name} must be {rng}, got {value!r}")


def alert_policy(settings: Any) -> AlertConfig:
    """The alert policy (:class:`AlertConfig` with its
    :class:`~ecgstream.alerts.rhythm.RhythmConfig`) from any object carrying fields of the same
    names, e.g. a :class:`~ecgstream.config.RunConfig`; fields it lacks keep their defaults.
    Out-of-range values raise ``ValueError`` naming the field."""
    from ecgstream.alerts.rhythm import RhythmConfig

    def pick(cls: type) -> dict[str, Any]:
        return {
            f.name: getattr(settings, f.name)
            for f in dataclasses.fields(cls)
            if f.name != "rhythm_config" and hasattr(settings, f.name)
        }

    return AlertConfig(**pick(AlertConfig), rhythm_config=RhythmConfig(**pick(RhythmConfig)))


@dataclass
class Alert:
    """One alert message as delivered (see :meth:`to_dict` for the JSON).

    ``id`` is the alert's stable id; ``status`` and ``sequence`` say which change of its
    lifecycle this message reports (:attr:`event_id` is the message's own id). ``start_s`` and
    ``end_s`` are the episode's start and its end so far (its final end when ``resolved``);
    ``at_s`` is the stream time the change was decided at (the end of the window that made it).
    """

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
    status: str = "firing"
    sequence: int = 0
    at_s: float | None = None
    previous_severity: str | None = None

    @property
    def event_id(self) -> str:
        """The message's id: ``<alert id>.<sequence>`` (one per change of the alert)."""
        return f"{self.id}.{self.sequence}"

    def advance(self, status: str, at_s: float, detail: str, severity: str | None = None) -> Alert:
        """Record the alert's next change (``escalated``, ``updated``, ``resolved``) under a new
        sequence number and return a snapshot of it. ``severity``, when given, becomes the
        alert's severity and the message names the one before it."""
        self.sequence += 1
        self.previous_severity = self.severity if severity is not None else None
        if severity is not None:
            self.severity = severity
        self.status, self.at_s, self.detail = status, at_s, detail
        return _copy(self)

    @property
    def category(self) -> str:
        if self.kind == KIND_ANOMALY:
            return "ecg.anomaly"
        if self.kind in RHYTHM_KINDS:
            return "ecg.rhythm"
        return "model.drift" if self.kind == "drift" else "signal.technical"

    def to_dict(self) -> dict:
        at = self.end_s if self.at_s is None else self.at_s
        return {
            "id": self.event_id,
            "alert_id": self.id,
            "status": self.status,
            "sequence": int(self.sequence),
            "type": self.category,
            "kind": self.kind,
            "stream": self.stream,
            "start": iso_time(self.start_s),
            "end": iso_time(self.end_s),
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "at_s": round(at, 3),
            "score": _num(self.score),
            "threshold": _num(self.threshold),
            "severity": self.severity,
            "previous_severity": self.previous_severity,
            "localisation": {
                "spans": [[round(a, 3), round(b, 3)] for a, b in self.spans],
                "leads": self.leads,
            },
            "model": {"name": self.model, "version": self.version},
            "window_index": int(self.window_index),
            "detail": self.detail,
        }


#: Rhythm alert kinds (:mod:`ecgstream.alerts.rhythm`), type ``ecg.rhythm``.
RHYTHM_KINDS = ("irregular_rhythm", "tachycardia", "bradycardia", "pause")


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
    span around the single highest sample (+-0.1 s) is returned. Without point scores
    (``point`` None) there are no spans.
    """
    if point is None:
        return []
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

    ``threshold`` is the base (warning) threshold (calibrated units); with ``cfg.adaptive`` the
    effective threshold is the larger of it and a rolling quantile of the stream's own recent
    scores. Windows are identified by ``k`` (e.g. their start sample); consecutive windows
    differ by ``step``. ``rhythm`` (set by the pipeline when rhythm alerts are on) is the
    stream's :class:`~ecgstream.alerts.rhythm.RhythmMachine`.
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
        rhythm_cfg=None,
    ):
        self.stream, self.cfg = stream, cfg
        self.base = float(threshold)
        self.model, self.version, self.leads = model, version, list(leads)
        self.step = step
        self.critical = critical
        self.pending: list[tuple[int, float, float, float, np.ndarray | None]] = []
        self.open: Alert | None = None
        self.last_k = -(2**62)
        self.cooldown_until = -math.inf
        self.cooldown_rank = -1
        self.cooldown_peak = math.inf  # the peak score of the alert that started the cooldown
        self.last_message_s = -math.inf
        #: (start s, windows) of the latest runs above threshold that were too short to alert
        self.near_misses: list[tuple[float, int]] = []
        self.quantile = None
        self.n_scores = 0
        self.drift = None
        self.rhythm = None
        if cfg.rhythm:
            from ecgstream.alerts.rhythm import RhythmMachine

            if rhythm_cfg is None:
                rhythm_cfg = cfg.rhythm_config
            self.rhythm = RhythmMachine(stream, model, version, leads, rhythm_cfg)
        if cfg.adaptive:
            from river import stats

            self.quantile = stats.RollingQuantile(
                q=cfg.adaptive_quantile, window_size=cfg.adaptive_window
            )
        if cfg.drift:
            from river import drift

            self.drift = drift.ADWIN()

    @property
    def active(self) -> bool:
        """Whether an alert is open (fired and not yet resolved)."""
        return self.open is not None

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

    def severity(self, score: float, thr: float | None = None) -> str:
        """Severity of a window score (``warning`` or ``critical``) under this stream's policy."""
        thr = self.threshold if thr is None else thr
        return severity_of(score, thr, self.cfg.critical_margin, self.critical)

    def update(
        self,
        k: int,
        score: float,
        t_start: float,
        t_end: float,
        point: np.ndarray | None,
        fs: float,
    ) -> list[Alert]:
        """Feed window ``k`` (calibrated ``score``, ``point`` scores or None, times in s);
        returns the alert messages it causes (opened, escalated, updated, resolved)."""
        out: list[Alert] = []
        thr = self.threshold
        if k != self.last_k + self.step:
            self.pending.clear()  # windows missing in between (gap or suppressed): start over
        self.last_k = k
        if self.open is not None:
            out += self._continue(score, t_start, t_end, point, fs, thr)
        elif score >= thr and (
            t_start >= self.cooldown_until
            or SEVERITY_RANK[self.severity(score, thr)] > self.cooldown_rank
            or (self.cfg.cooldown_rise > 0 and score >= self.cfg.cooldown_rise * self.cooldown_peak)
        ):
            self.pending.append((k, score, t_start, t_end, point))
            if len(self.pending) >= self.cfg.min_windows:
                out.append(self._open(thr, fs, t_end))
        else:
            if self.pending:  # a run above threshold too short to alert: remember why
                self.near_misses.append((self.pending[0][2], len(self.pending)))
                del self.near_misses[:-20]
            self.pending.clear()
        self._learn(k, score, t_start, t_end)
        if self.drift is not None and self.drift.drift_detected:
            out.append(self._drift_alert(k, score, t_start, t_end))
        return out

    def why_not(self) -> str:
        """Why this stream has no open alert although its last window was above the threshold
        (for readable output); empty when nothing is pending."""
        if self.open is not None or not self.pending:
            return ""
        n = len(self.pending)
        return (
            f"above threshold for {n} window{'s' if n > 1 else ''}, "
            f"needs {self.cfg.min_windows} in a row"
        )

    def close(self, t_end: float) -> list[Alert]:
        """The stream ended (or is forgotten): resolve an open alert at its last window's end."""
        if self.open is None:
            return []
        return [self._resolve(t_end, "the stream ended")]

    def _continue(
        self,
        score: float,
        t_start: float,
        t_end: float,
        point: np.ndarray | None,
        fs: float,
        thr: float,
    ) -> list[Alert]:
        cur = self.open
        assert cur is not None
        if score < thr - self.cfg.hysteresis:
            return [
                self._resolve(t_end, f"score {score:.2f} below {thr - self.cfg.hysteresis:.2f}")
            ]
        if score < thr:
            return []  # inside the hysteresis band: still open, nothing new
        cur.end_s = t_end
        severity = self.severity(score, thr)
        sustained = self.cfg.sustain_s > 0 and t_end - cur.start_s >= self.cfg.sustain_s
        if sustained:
            severity = "critical"
        new_spans = [
            s
            for s in localise(point, t_start, fs, thr)
            if point is not None and not any(s[0] < b and s[1] > a for a, b in cur.spans)
        ]
        if SEVERITY_RANK[severity] > SEVERITY_RANK[cur.severity]:
            why = (
                f"score {score:.2f} at or above the critical level"
                if severity == self.severity(score, thr)
                else f"above threshold for {t_end - cur.start_s:.0f} s (sustained)"
            )
            return [self._change("escalated", score, t_end, new_spans, why, severity)]
        due = t_end - self.last_message_s >= self.cfg.update_s
        if due and self.cfg.rise > 0 and score >= self.cfg.rise * cur.score:
            return [
                self._change(
                    "updated",
                    score,
                    t_end,
                    new_spans,
                    f"score {score:.2f}, {score / cur.score:.1f}x the alert's peak so far",
                )
            ]
        if new_spans and due:
            return [
                self._change(
                    "updated", score, t_end, new_spans, f"new span(s) at score {score:.2f}"
                )
            ]
        cur.score = max(cur.score, score)
        return []

    def _change(
        self,
        status: str,
        score: float,
        t_end: float,
        new_spans: list[list[float]],
        detail: str,
        severity: str | None = None,
    ) -> Alert:
        cur = self.open
        assert cur is not None
        cur.score = max(cur.score, score)
        cur.spans = sorted(cur.spans + new_spans)
        self.last_message_s = t_end
        return cur.advance(status, t_end, detail, severity)

    def _resolve(self, t_at: float, detail: str) -> Alert:
        cur = self.open
        assert cur is not None
        self.open = None
        self.cooldown_until = cur.end_s + self.cfg.cooldown_s
        self.cooldown_rank = SEVERITY_RANK[cur.severity]
        self.cooldown_peak = cur.score
        self.pending.clear()
        return cur.advance("resolved", t_at, f"resolved: {detail}")

    def _learn(self, k: int, score: float, t_start: float, t_end: float) -> None:
        if not math.isfinite(score):
            return
        self.n_scores += 1
        if self.quantile is not None:
            self.quantile.update(score)
        if self.drift is not None:
            self.drift.update(score)

    def _open(self, thr: float, fs: float, t_at: float) -> Alert:
        k0 = self.pending[0][0]
        best = max(self.pending, key=lambda p: p[1])
        _, score, t_start, _, point = best
        spans = localise(point, t_start, fs, thr) if point is not None else []
        alert = Alert(
            id=alert_id(self.stream, k0, self.model, self.version, KIND_ANOMALY),
            kind=KIND_ANOMALY,
            stream=self.stream,
            start_s=self.pending[0][2],
            end_s=self.pending[-1][3],
            score=score,
            threshold=thr,
            severity=self.severity(score, thr),
            model=self.model,
            version=self.version,
            window_index=k0,
            spans=spans,
            leads=self.leads,
            detail=f"{len(self.pending)} consecutive windows at or above {thr:.2f}",
            at_s=t_at,
        )
        self.open = alert
        self.last_message_s = t_at
        self.pending.clear()
        return _copy(alert)

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


def _copy(alert: Alert) -> Alert:
    """A snapshot of an alert's current state (the machine keeps mutating its own)."""
    return dataclasses.replace(alert, spans=[list(x) for x in alert.spans], leads=list(alert.leads))
