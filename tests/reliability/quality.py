"""Signal-quality scenario: clean normal ECG monitors versus the same monitors with artefacts.

Artefacts (all on the raw signal in mV, before the wire): flat line, lead off (missing samples),
saturation (the amplifier rails at 12 mV), mains hum (50 Hz), baseline wander (0.3 Hz), scattered
missing samples (10 % of a stretch) and a gap (chunks never sent). Each monitor gets one episode
of each kind at a random place. The monitors run through the worker's
:class:`~ecgstream.streaming.pipeline.Pipeline` in one process (1 s chunks), and every alert is
classified: an ECG anomaly alert on a normal record is a false alarm; it is *on an artefact*
when its span overlaps an episode.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ecgstream.alerts.state import AlertConfig
from ecgstream.alerts.technical import TechnicalConfig
from ecgstream.runtime.scorer import Scorer
from ecgstream.streaming.pipeline import Incoming, Pipeline
from ecgstream.streaming.wire import Chunk

__all__ = ["ARTEFACTS", "inject", "Episode", "QualityResult", "run_monitors"]

ARTEFACTS = (
    "flat_line",
    "lead_off",
    "saturation",
    "mains_hum",
    "baseline_wander",
    "missing_samples",
    "gap",
)
T0 = 1_700_000_000.0


@dataclass
class Episode:
    kind: str
    start_s: float  # seconds from the stream start
    end_s: float


def inject(x: np.ndarray, fs: float, ep: Episode, rng: np.random.Generator) -> np.ndarray:
    """``x`` ``(n, leads)`` mV with artefact ``ep`` applied (the gap is applied when chunking)."""
    a, b = int(ep.start_s * fs), int(ep.end_s * fs)
    y = x.copy()
    t = np.arange(b - a) / fs
    if ep.kind == "flat_line":
        y[a:b] = y[a]
    elif ep.kind == "lead_off":
        y[a:b] = np.nan
    elif ep.kind == "saturation":
        y[a:b] = 12.0 * np.sign(rng.standard_normal())
    elif ep.kind == "mains_hum":
        y[a:b] += (0.3 * np.sin(2 * np.pi * 50.0 * t))[:, None]
    elif ep.kind == "baseline_wander":
        y[a:b] += (1.0 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6.28)))[:, None]
    elif ep.kind == "missing_samples":
        idx = a + rng.choice(b - a, (b - a) // 10, replace=False)
        y[idx] = np.nan
    return y


@dataclass
class QualityResult:
    monitor_hours: float
    anomaly_alerts: int = 0
    anomaly_on_artefact: Counter = field(default_factory=Counter)
    anomaly_elsewhere: int = 0
    technical: Counter = field(default_factory=Counter)
    suppressed_windows: int = 0
    scored_windows: int = 0
    episodes_flagged: Counter = field(default_factory=Counter)  # technical alert or suppression
    episodes: Counter = field(default_factory=Counter)

    @property
    def false_alarms_per_hour(self) -> float:
        return self.anomaly_alerts / self.monitor_hours

    def summary(self) -> dict:
        return {
            "monitor_hours": round(self.monitor_hours, 3),
            "anomaly_alerts": self.anomaly_alerts,
            "false_anomaly_alerts_per_monitor_hour": round(self.false_alarms_per_hour, 2),
            "anomaly_alerts_on_artefacts": dict(self.anomaly_on_artefact),
            "anomaly_alerts_elsewhere": self.anomaly_elsewhere,
            "technical_alerts": dict(self.technical),
            "episodes": dict(self.episodes),
            "episodes_with_technical_alert": dict(self.episodes_flagged),
            "windows_scored": self.scored_windows,
            "windows_suppressed": self.suppressed_windows,
        }


@functools.lru_cache(maxsize=64)
def _signal(seconds: float, fs: int, seed: int) -> np.ndarray:
    from conftest import synthetic_ecg

    rng = np.random.default_rng(seed)
    return synthetic_ecg(seconds, fs, heart_rate=int(rng.integers(55, 95)), seed=seed)


def run_monitors(
    model: str,
    n_monitors: int,
    seconds: int,
    artefacts: tuple[str, ...] = (),
    episode_s: float = 15.0,
    seed: int = 0,
    technical: bool = True,
    fs: int = 360,
) -> QualityResult:
    """Run ``n_monitors`` normal ECG streams (with ``artefacts`` injected) through a pipeline."""
    scorer = Scorer(model)
    pipe = Pipeline(scorer, AlertConfig(), TechnicalConfig(enabled=technical))
    rng = np.random.default_rng(seed)
    gap_s = 10.0  # clean seconds between episodes
    res = QualityResult(monitor_hours=n_monitors * seconds / 3600.0)
    streams = []
    for m in range(n_monitors):
        x = _signal(seconds, fs, seed * 1000 + m).copy()
        eps: list[Episode] = []
        if artefacts:
            slots = rng.permutation(int((seconds - 10) // (episode_s + gap_s)))[: len(artefacts)]
            for kind, slot in zip(artefacts, slots, strict=False):
                start = 10.0 + slot * (episode_s + gap_s) + rng.uniform(0, gap_s / 2)
                if start + episode_s < seconds - 3:
                    eps.append(Episode(kind, start, start + episode_s))
            for ep in eps:
                x = inject(x, fs, ep, rng)
                res.episodes[ep.kind] += 1
        streams.append((f"mon{m:03d}", x, eps))
    alerts = []
    for s in range(seconds):
        items = []
        for name, x, eps in streams:
            if any(ep.kind == "gap" and ep.start_s <= s < ep.end_s for ep in eps):
                continue
            items.append(
                Incoming(Chunk(name, s, T0 + s, float(fs), ["MLII"], x[s * fs : (s + 1) * fs]))
            )
        out = pipe.process(items, now=T0 + s)
        res.scored_windows += out.windows
        res.suppressed_windows += out.suppressed
        alerts.extend(out.alerts)
    by_stream = {name: eps for name, _, eps in streams}
    flagged: set[tuple[str, int]] = set()
    for a in alerts:
        eps = by_stream[a.stream]
        a0, a1 = a.start_s - T0, a.end_s - T0
        hit = [ep for ep in eps if a0 < ep.end_s + 1 and a1 > ep.start_s - 1]
        if a.kind == "anomaly":
            res.anomaly_alerts += 1
            if hit:
                res.anomaly_on_artefact[hit[0].kind] += 1
            else:
                res.anomaly_elsewhere += 1
        elif a.kind != "drift":
            res.technical[a.kind] += 1
            flagged.update((a.stream, i) for i, ep in enumerate(eps) if ep in hit)
    for name, i in flagged:
        res.episodes_flagged[by_stream[name][i].kind] += 1
    return res
