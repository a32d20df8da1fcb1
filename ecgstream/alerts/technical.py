"""Technical conditions of the signal itself: lead off, flat line, saturation and gaps.

These are checked on every raw chunk (physical units, the model's leads) and reported as their
own alert kinds, never as ECG anomalies; windows overlapping them are not scored. A condition
raises one alert when it starts and clears silently when a chunk no longer shows it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ecgstream.alerts.state import Alert, alert_id

__all__ = [
    "TechnicalConfig",
    "check_chunk",
    "check_chunks",
    "check_streams",
    "TechnicalMachine",
    "CONDITIONS",
]

CONDITIONS = ("lead_off", "flat_line", "saturation", "gap")


@dataclass(frozen=True)
class TechnicalConfig:
    """Thresholds for technical conditions (physical units of the stream, usually mV).

    ``lead_off_fraction``: share of missing samples of a lead in a chunk; ``flat_ptp``: a lead
    whose peak-to-peak range in a chunk is below this is flat; ``saturation_level`` and
    ``saturation_fraction``: share of samples at or beyond the level (or at the ADC limits of an
    int16 frame); ``min_gap_s``: shorter gaps are not reported (they still restart the filters).
    """

    lead_off_fraction: float = 0.5
    flat_ptp: float = 0.01
    saturation_level: float = 10.0
    saturation_fraction: float = 0.05
    min_gap_s: float = 0.0
    enabled: bool = True

    def describe(self, name: str) -> str:
        """What condition ``name`` means with these thresholds (for alert details)."""
        return {
            "lead_off": "missing samples",
            "flat_line": f"peak-to-peak range below {self.flat_ptp:g}",
            "saturation": f"samples at or beyond {self.saturation_level:g} or at the ADC limit",
        }[name]


def check_chunks(
    x: np.ndarray, cfg: TechnicalConfig, clipped: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Conditions of chunks ``x`` ``(..., n, leads)``: name -> bool ``(..., leads)`` per lead.

    ``clipped`` ``(..., leads)`` counts int16 samples at the ADC limits (binary frames).
    """
    n = max(x.shape[-2], 1)
    nan = np.isnan(x)
    if nan.any():
        off = nan.sum(axis=-2) / n >= cfg.lead_off_fraction
        lo = np.where(nan, np.inf, x).min(axis=-2)
        hi = np.where(nan, -np.inf, x).max(axis=-2)
        ptp = np.where(nan.all(axis=-2), 0.0, hi - lo)
        mag = np.abs(np.nan_to_num(x))
    else:
        off = np.zeros(x.shape[:-2] + x.shape[-1:], bool)
        ptp = x.max(axis=-2) - x.min(axis=-2)
        mag = np.abs(x)
    flat = ~off & (ptp < cfg.flat_ptp)
    sat_count = (mag >= cfg.saturation_level).sum(axis=-2)
    if clipped is not None:
        sat_count = np.maximum(sat_count, clipped)
    sat = sat_count / n >= cfg.saturation_fraction
    return {"lead_off": off, "flat_line": flat, "saturation": sat}


def check_chunk(
    x: np.ndarray, cfg: TechnicalConfig, clipped: np.ndarray | None = None
) -> dict[str, tuple[list[int], str]]:
    """Conditions of one chunk ``x`` ``(n, leads)``: name -> (indices of affected leads, detail)."""
    flags = check_chunks(x, cfg, clipped)
    return {
        name: (np.flatnonzero(mask).tolist(), cfg.describe(name)) for name, mask in flags.items()
    }


class TechnicalMachine:
    """Per-stream technical condition state: one alert per episode of each condition."""

    def __init__(self, stream: str, model: str, version: str, leads: list[str]):
        self.stream, self.model, self.version, self.leads = stream, model, version, list(leads)
        self.active: dict[str, bool] = {}
        self._any_active = False

    @property
    def any_active(self) -> bool:
        """Whether a condition is present (as of the last :meth:`update`)."""
        return self._any_active

    def _alert(
        self, kind: str, start_s: float, end_s: float, detail: str, leads: list[str]
    ) -> Alert:
        # technical alerts are keyed by their start time (ms) rather than a window index
        start_ms = int(math.floor(start_s * 1000 + 0.5))
        return Alert(
            id=alert_id(self.stream, start_ms, self.model, self.version, kind),
            kind=kind,
            stream=self.stream,
            start_s=start_s,
            end_s=end_s,
            score=math.nan,
            threshold=math.nan,
            severity="warning",
            model=self.model,
            version=self.version,
            window_index=start_ms,
            spans=[[start_s, end_s]],
            leads=leads,
            detail=detail,
        )

    def update(
        self, conditions: dict[str, tuple[list[int], str]], start_s: float, end_s: float
    ) -> list[Alert]:
        """Feed one chunk's conditions (from :func:`check_chunk`) covering ``[start_s, end_s)``."""
        out = []
        for kind, (lead_idx, detail) in conditions.items():
            present = bool(lead_idx)
            if present and not self.active.get(kind):
                leads = [self.leads[i] for i in lead_idx if i < len(self.leads)]
                out.append(
                    self._alert(kind, start_s, end_s, f"{', '.join(leads)}: {detail}", leads)
                )
            self.active[kind] = present
        self._any_active = any(self.active.values())
        return out

    def gap(self, start_s: float, end_s: float, detail: str, cfg: TechnicalConfig) -> list[Alert]:
        """A gap in the stream (missing sequence numbers or time)."""
        if end_s - start_s < cfg.min_gap_s:
            return []
        return [self._alert("gap", start_s, end_s, detail, self.leads)]


def check_streams(
    machines: list[TechnicalMachine],
    x: np.ndarray,
    span: Callable[[int], tuple[float, float]],
    cfg: TechnicalConfig,
    clipped: np.ndarray | None = None,
) -> tuple[list[Alert], list[bool]]:
    """Technical conditions of equally shaped chunks ``x`` ``(chunks, n, leads)``, chunk ``j``
    of the stream of ``machines[j]`` covering ``span(j)`` (start, end; seconds), checked in one
    pass. Returns the alerts of conditions that start, and per chunk whether it shows any
    condition (its windows are not to be scored). ``clipped`` as in :func:`check_chunks`."""
    flags = check_chunks(x, cfg, clipped)  # name -> (chunks, leads) bool
    any_flag = np.zeros(len(machines), bool)
    for mask in flags.values():
        any_flag |= mask.any(axis=1)
    flagged = any_flag.tolist()
    alerts: list[Alert] = []
    for j, machine in enumerate(machines):
        if not flagged[j] and not machine.any_active:
            continue
        conds = {
            name: (np.flatnonzero(mask[j]).tolist(), cfg.describe(name))
            for name, mask in flags.items()
        }
        alerts.extend(machine.update(conds, *span(j)))
    return alerts, flagged
