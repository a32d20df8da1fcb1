"""Alerts: per-stream state machines turning window scores and signal checks into alerts.

- :mod:`ecgstream.alerts.state`: ECG anomaly alerts (threshold, hysteresis, minimum duration,
  cooldown, severity, localisation, deterministic ids; optional river adaptive threshold and
  ADWIN drift alerts).
- :mod:`ecgstream.alerts.technical`: lead off, flat line, saturation and gaps, as their own kinds.
"""

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
    "CONDITIONS",
    "TechnicalConfig",
    "TechnicalMachine",
    "check_chunk",
]
