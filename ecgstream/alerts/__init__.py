"""Alerts: per-stream state machines turning window scores and signal checks into alerts.

- :mod:`ecgstream.alerts.state`: ECG anomaly alerts with a lifecycle (firing, escalated,
  updated, resolved; threshold, hysteresis, minimum duration, cooldown, severity, localisation,
  deterministic ids; optional river adaptive threshold and ADWIN drift alerts).
- :mod:`ecgstream.alerts.rhythm`: irregular rhythm, tachycardia, bradycardia and pause alerts
  from each window's own periodicity (no R-peak detection).
- :mod:`ecgstream.alerts.technical`: lead off, flat line, saturation and gaps, as their own kinds.
"""

from ecgstream.alerts.rhythm import RhythmConfig, RhythmMachine, rhythm_features
from ecgstream.alerts.state import (
    Alert,
    AlertConfig,
    AnomalyMachine,
    alert_id,
    localise,
    severity_of,
)
from ecgstream.alerts.technical import CONDITIONS, TechnicalConfig, TechnicalMachine, check_chunk

__all__ = [
    "Alert",
    "AlertConfig",
    "AnomalyMachine",
    "alert_id",
    "localise",
    "severity_of",
    "RhythmConfig",
    "RhythmMachine",
    "rhythm_features",
    "CONDITIONS",
    "TechnicalConfig",
    "TechnicalMachine",
    "check_chunk",
]
