"""Rhythm alerts from each window's own periodicity: no R-peak detection.

For every preprocessed window (model rate, the model's first lead) :func:`rhythm_features`
computes a QRS-energy envelope (absolute first difference, smoothed over 80 ms) and its
normalised, unbiased autocorrelation. From it:

- ``regularity``: the highest autocorrelation at lags 0.2-2.5 s. A regular rhythm repeats
  itself (about 0.5-0.8 on sinus rhythm); atrial fibrillation does not (about 0.2). From 0.2 s,
  ventricular flutter and fast ventricular tachycardia (up to 300 bpm) read at their own rate;
  up to 2.5 s, bigeminy and trigeminy (which repeat every two or three beats) read as regular.
- ``rate_bpm``: 60 / the shortest lag whose local autocorrelation peak reaches
  ``peak_share`` of the highest one (the beat period, not a multiple of it).
- ``pause_s``: the longest stretch in which the envelope stays below ``quiet`` x its 95th
  percentile: the time with no QRS complex.

:class:`RhythmMachine` turns them into alerts of their own kinds (``irregular_rhythm``,
``tachycardia``, ``bradycardia``, ``pause``; type ``ecg.rhythm``) with the same lifecycle and
message format as anomaly alerts (:mod:`ecgstream.alerts.state`), each with its own
thresholds (:class:`RhythmConfig`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ecgstream.alerts.state import SEVERITY_RANK, Alert, _copy, alert_id, check_fields

__all__ = [
    "RhythmConfig",
    "RhythmFeatures",
    "rhythm_features",
    "RhythmMachine",
    "update_streams",
    "KINDS",
]

KINDS = ("irregular_rhythm", "tachycardia", "bradycardia", "pause")


@dataclass(frozen=True)
class RhythmConfig:
    """Rhythm alert thresholds (rates in beats per minute, times in seconds).

    - irregular rhythm: ``regularity`` below ``irregular_below`` for ``irregular_windows``
      consecutive windows; resolves when a window reaches ``irregular_below + irregular_hysteresis``.
    - tachycardia / bradycardia: ``rate_bpm`` at or above ``tachy_bpm`` (``critical`` at
      ``tachy_critical_bpm``) or at or below ``brady_bpm`` (``critical`` at
      ``brady_critical_bpm``) for ``rate_windows`` consecutive windows whose ``regularity`` is at
      least ``rate_min_regularity`` (a rate is only read from a rhythm that repeats); a
      bradycardia period must also be mostly quiet (``pause_s`` at least ``brady_quiet`` of it).
    - pause: ``pause_s`` at or above ``pause_s`` in one window (``critical``).
    """

    irregular_below: float = 0.30
    irregular_hysteresis: float = 0.10
    irregular_windows: int = 3
    tachy_bpm: float = 120.0
    tachy_critical_bpm: float = 150.0
    brady_bpm: float = 40.0
    brady_critical_bpm: float = 30.0
    rate_windows: int = 2
    rate_min_regularity: float = 0.40
    brady_quiet: float = 0.6
    pause_s: float = 3.0
    min_lag_s: float = 0.2
    max_lag_s: float = 2.5
    smooth_s: float = 0.08
    peak_share: float = 0.8
    quiet: float = 0.15

    def __post_init__(self) -> None:
        check_fields(
            self,
            irregular_below=(0.0, 1.0),
            irregular_hysteresis=(0.0, 1.0),
            irregular_windows=(1, None),
            tachy_bpm=(0.0, None),
            tachy_critical_bpm=(0.0, None),
            brady_bpm=(0.0, None),
            brady_critical_bpm=(0.0, None),
            rate_windows=(1, None),
            rate_min_regularity=(0.0, 1.0),
            brady_quiet=(0.0, 1.0),
            pause_s=(0.0, None),
            min_lag_s=(0.0, None),
            max_lag_s=(0.0, None),
            smooth_s=(0.0, None),
            peak_share=(0.0, 1.0),
            quiet=(0.0, 1.0),
        )
        order = [
            ("brady_critical_bpm", "brady_bpm"),
            ("brady_bpm", "tachy_bpm"),
            ("tachy_bpm", "tachy_critical_bpm"),
            ("min_lag_s", "max_lag_s"),
        ]
        for lo, hi in order:
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(
                    f"{lo} ({getattr(self, lo):g}) must not be above {hi} ({getattr(self, hi):g})"
                )
        if self.brady_bpm >= self.tachy_bpm:
            raise ValueError(
                f"brady_bpm ({self.brady_bpm:g}) must be below tachy_bpm ({self.tachy_bpm:g})"
            )
        if self.pause_s <= 0:
            raise ValueError(f"pause_s must be above 0, got {self.pause_s!r}")


@dataclass
class RhythmFeatures:
    """Per-window rhythm estimates, arrays of shape ``(n_windows,)``."""

    regularity: np.ndarray
    rate_bpm: np.ndarray
    pause_s: np.ndarray


def _envelope(x: np.ndarray, fs: float, smooth_s: float) -> np.ndarray:
    """QRS-energy envelope of windows ``x`` ``(n, samples)``: |first difference|, trailing
    moving mean over ``smooth_s`` (zeros before the window)."""
    from scipy.ndimage import uniform_filter1d

    d = np.empty_like(x)
    d[:, 0] = 0.0
    np.subtract(x[:, 1:], x[:, :-1], out=d[:, 1:])
    np.abs(d, out=d)
    k = max(int(round(smooth_s * fs)), 1)
    return uniform_filter1d(d, k, axis=1, mode="constant", cval=0.0, origin=(k - 1) // 2)


def _quantile(a: np.ndarray, q: float) -> np.ndarray:
    """Row-wise ``np.quantile(a, q, axis=1)`` (linear interpolation) by partial sorting."""
    pos = q * (a.shape[1] - 1)
    lo = int(pos)
    hi = min(lo + 1, a.shape[1] - 1)
    part = np.partition(a, (lo, hi), axis=1)
    return part[:, lo] + (pos - lo) * (part[:, hi] - part[:, lo])


def _longest_run(mask: np.ndarray) -> np.ndarray:
    """Length (samples) of the longest run of True in each row of ``mask`` ``(n, samples)``."""
    n, m = mask.shape
    padded = np.zeros((n, m + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    out = np.zeros(n, np.int64)
    rows_s, cols_s = np.nonzero(edges == 1)
    rows_e, cols_e = np.nonzero(edges == -1)
    np.maximum.at(out, rows_s, cols_e - cols_s)  # starts and ends pair up in row-major order
    return out


def rhythm_features(
    windows: np.ndarray, fs: float, cfg: RhythmConfig | None = None
) -> RhythmFeatures:
    """Rhythm estimates of preprocessed windows ``(n, samples)`` at ``fs`` Hz (one lead)."""
    cfg = cfg or RhythmConfig()
    x = np.asarray(windows, np.float64)
    if x.ndim == 1:
        x = x[None]
    n, m = x.shape
    env = _envelope(x, fs, cfg.smooth_s)
    e = env - env.mean(axis=1, keepdims=True)
    n_fft = 1 << int(2 * m - 1).bit_length()  # >= 2m - 1: no circular wrap
    spec = np.fft.rfft(e, n_fft, axis=1)
    ac = np.fft.irfft(spec.real**2 + spec.imag**2, n_fft, axis=1)[:, :m]
    ac = ac / np.maximum(ac[:, :1], 1e-12) * (m / (m - np.arange(m)))  # unbiased
    lo = max(int(cfg.min_lag_s * fs), 1)
    hi = min(int(cfg.max_lag_s * fs), m - 2)
    seg = ac[:, lo : hi + 1]
    regularity = seg.max(axis=1)
    # local maxima reaching peak_share of the highest: the first is the beat period
    inner = ac[:, lo - 1 : hi + 2]
    is_peak = (inner[:, 1:-1] >= inner[:, :-2]) & (inner[:, 1:-1] >= inner[:, 2:])
    good = is_peak & (seg >= cfg.peak_share * regularity[:, None]) & (seg > 0)
    first = np.where(good.any(axis=1), good.argmax(axis=1), seg.argmax(axis=1))
    rate = 60.0 * fs / (lo + first)
    flat = env.max(axis=1) <= 1e-9
    quiet = env < cfg.quiet * _quantile(env, 0.95)[:, None]
    pause = _longest_run(quiet) / fs
    regularity = np.where(flat, np.nan, regularity)
    rate = np.where(flat, np.nan, rate)
    pause = np.where(flat, np.nan, pause)
    return RhythmFeatures(regularity, rate, pause)


class _Condition:
    """Lifecycle of one rhythm alert kind on one stream (firing, escalated, resolved)."""

    def __init__(self, machine: RhythmMachine, kind: str, needed: int):
        self.m, self.kind, self.needed = machine, kind, needed
        self.pending: list[tuple[int, float, float, float, str]] = []
        self.open: Alert | None = None

    def feed(
        self,
        k: int,
        on: bool,
        still: bool,
        value: float,
        severity: str,
        t0: float,
        t1: float,
        threshold: float,
        detail: str,
    ) -> list[Alert]:
        """``on``: the window meets the condition; ``still``: an open alert goes on."""
        if self.open is not None:
            cur = self.open
            if not still:
                self.open = None
                self.pending.clear()
                return [cur.advance("resolved", t1, f"resolved: {detail}")]
            if on:
                cur.end_s = t1
                if SEVERITY_RANK[severity] > SEVERITY_RANK[cur.severity]:
                    cur.score = value
                    cur.spans = cur.spans + [[t0, t1]]
                    return [cur.advance("escalated", t1, detail, severity)]
            return []
        if not on:
            self.pending.clear()
            return []
        self.pending.append((k, value, t0, t1, severity))
        if len(self.pending) < self.needed:
            return []
        k0, _, s0, _, _ = self.pending[0]
        worst = max(self.pending, key=lambda p: SEVERITY_RANK[p[4]])[4]
        m = self.m
        self.open = Alert(
            id=alert_id(m.stream, k0, m.model, m.version, self.kind),
            kind=self.kind,
            stream=m.stream,
            start_s=s0,
            end_s=t1,
            score=value,
            threshold=threshold,
            severity=worst,
            model=m.model,
            version=m.version,
            window_index=k0,
            spans=[[s0, t1]],
            leads=m.leads[:1],
            detail=detail,
            at_s=t1,
        )
        self.pending.clear()
        return [_copy(self.open)]


class RhythmMachine:
    """Per-stream rhythm alert state: one :class:`_Condition` per kind (see module docstring).

    ``trace`` (when ``keep_trace``) collects every window's ``(k, start_s, end_s, regularity,
    rate_bpm, pause_s)`` for evaluation and plots.
    """

    def __init__(
        self,
        stream: str,
        model: str,
        version: str,
        leads: list[str],
        cfg: RhythmConfig | None = None,
        keep_trace: bool = False,
    ):
        self.stream, self.model, self.version, self.leads = stream, model, version, list(leads)
        self.cfg = cfg or RhythmConfig()
        self.conditions = {
            "irregular_rhythm": _Condition(self, "irregular_rhythm", self.cfg.irregular_windows),
            "tachycardia": _Condition(self, "tachycardia", self.cfg.rate_windows),
            "bradycardia": _Condition(self, "bradycardia", self.cfg.rate_windows),
            "pause": _Condition(self, "pause", 1),
        }
        self.keep_trace = keep_trace
        self.trace: list[tuple[int, float, float, float, float, float]] = []
        self.last_k: int | None = None
        self.step: int | None = None

    def update(
        self, index: np.ndarray, windows: np.ndarray, starts_s: np.ndarray, fs: float
    ) -> list[Alert]:
        """Feed one stream's new windows ``(n, leads, samples)`` (model rate ``fs`` Hz) with
        their ids ``index`` and start times ``starts_s`` (s); returns alert messages."""
        if not len(index):
            return []
        f = rhythm_features(np.asarray(windows)[:, 0], fs, self.cfg)
        win_s = np.asarray(windows).shape[-1] / fs
        out: list[Alert] = []
        for j, k in enumerate(np.asarray(index).tolist()):
            t0 = float(starts_s[j])
            out += self.update_features(
                k, float(f.regularity[j]), float(f.rate_bpm[j]), float(f.pause_s[j]), t0, t0 + win_s
            )
        return out

    def update_features(
        self, k: int, regularity: float, rate: float, pause: float, t0: float, t1: float
    ) -> list[Alert]:
        """Feed one window's rhythm estimates (see :func:`rhythm_features`)."""
        cfg = self.cfg
        if self.keep_trace:
            self.trace.append((k, t0, t1, regularity, rate, pause))
        if self.last_k is not None and self.step is None and k > self.last_k:
            self.step = k - self.last_k
        if self.last_k is not None and self.step is not None and k != self.last_k + self.step:
            for c in self.conditions.values():
                c.pending.clear()  # windows missing in between: start over
        self.last_k = k
        if not math.isfinite(regularity):  # a flat window: technical alerts cover it
            return []
        out: list[Alert] = []
        irr = regularity < cfg.irregular_below
        out += self.conditions["irregular_rhythm"].feed(
            k,
            irr,
            regularity < cfg.irregular_below + cfg.irregular_hysteresis,
            regularity,
            "warning",
            t0,
            t1,
            cfg.irregular_below,
            f"periodicity {regularity:.2f} (irregular below {cfg.irregular_below:.2f})",
        )
        readable = regularity >= cfg.rate_min_regularity
        tachy = readable and rate >= cfg.tachy_bpm
        sev = "critical" if rate >= cfg.tachy_critical_bpm else "warning"
        out += self.conditions["tachycardia"].feed(
            k,
            tachy,
            rate >= cfg.tachy_bpm - 10 or not readable,
            rate,
            sev,
            t0,
            t1,
            cfg.tachy_bpm,
            f"heart rate about {rate:.0f} bpm (tachycardia from {cfg.tachy_bpm:.0f})",
        )
        # a slow period with QRS energy inside it (bigeminy: every other beat) is no bradycardia
        brady = readable and rate <= cfg.brady_bpm and pause >= cfg.brady_quiet * 60.0 / rate
        sev = "critical" if rate <= cfg.brady_critical_bpm else "warning"
        out += self.conditions["bradycardia"].feed(
            k,
            brady,
            rate <= cfg.brady_bpm + 5 or not readable,
            rate,
            sev,
            t0,
            t1,
            cfg.brady_bpm,
            f"heart rate about {rate:.0f} bpm (bradycardia up to {cfg.brady_bpm:.0f})",
        )
        paused = pause >= cfg.pause_s
        out += self.conditions["pause"].feed(
            k,
            paused,
            paused,
            pause,
            "critical",
            t0,
            t1,
            cfg.pause_s,
            f"longest stretch without QRS activity {pause:.1f} s (pause from {cfg.pause_s:.1f} s)",
        )
        return out

    def close(self, t_end: float) -> list[Alert]:
        """The stream ended: resolve every open rhythm alert."""
        out = []
        for c in self.conditions.values():
            if c.open is not None:
                out.append(c.open.advance("resolved", t_end, "resolved: the stream ended"))
                c.open = None
        return out


def update_streams(parts: list, starts_s: np.ndarray, fs: float) -> list[Alert]:
    """Rhythm alerts of one scoring batch: ``parts`` are ``(stream state, windows)`` pairs as
    the pipeline cuts them (``state.anomaly.rhythm`` the stream's :class:`RhythmMachine` or
    None), ``starts_s`` every window's start (s) in batch order. The features of all windows
    are computed in one call."""
    machines, rows, sel, i = [], [], [], 0
    for st, wins in parts:
        n = len(wins.index)
        machine = st.anomaly.rhythm
        if machine is not None and n:
            machines.append((machine, wins.index))
            rows.append(wins.data[:, 0])
            sel.append(np.arange(i, i + n))
        i += n
    if not machines:
        return []
    x = rows[0] if len(rows) == 1 else np.concatenate(rows)
    f = rhythm_features(x, fs, machines[0][0].cfg)
    win_s = x.shape[-1] / fs
    starts = np.asarray(starts_s)[np.concatenate(sel)].tolist()
    reg, rate, pause = f.regularity.tolist(), f.rate_bpm.tolist(), f.pause_s.tolist()
    out: list[Alert] = []
    j = 0
    for machine, index in machines:
        for k in np.asarray(index).tolist():
            t0 = starts[j]
            out += machine.update_features(k, reg[j], rate[j], pause[j], t0, t0 + win_s)
            j += 1
    return out
