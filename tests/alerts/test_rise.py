"""``rise`` / ``cooldown_rise``: a window well above an alert's peak is news, inside the alert
or its cooldown."""

from __future__ import annotations

import dataclasses

import pytest

from ecgstream.alerts.state import AlertConfig, AnomalyMachine
from ecgstream.config import ConfigError, RunConfig

FS = 100.0
# warning at 3, critical at 50; no sustained escalation; localisation off (no point scores)
CFG = AlertConfig(min_windows=2, cooldown_s=20.0, sustain_s=0.0, update_s=3.0, rhythm=False)


def _feed(cfg: AlertConfig, scores: list[float]) -> list:
    """Windows of 2 s every 1 s starting at t = 1000 s, without point scores."""
    m = AnomalyMachine("bed-1", cfg, 3.0, "m", "1", ["MLII"], critical=50.0)
    out = []
    for k, s in enumerate(scores):
        out += m.update(k, float(s), 1000.0 + k, 1002.0 + k, None, FS)
    return out


def test_a_window_well_above_the_open_alerts_peak_is_an_update() -> None:
    scores = [4, 5, 5, 5, 5, 16, 17, 40, 5, 0]
    off = _feed(CFG, scores)
    assert [m.status for m in off] == ["firing", "resolved"]  # no spans: nothing to say
    on = _feed(dataclasses.replace(CFG, rise=3.0), scores)
    assert [m.status for m in on] == ["firing", "updated", "resolved"]
    upd = on[1]
    assert upd.id == on[0].id and upd.severity == "warning" and upd.at_s == 1007.0
    assert upd.score == 16.0 and "3.2x the alert's peak" in upd.detail
    # 40 is 2.4x the new peak 17: below rise; the next update waits update_s anyway
    assert on[2].score == 40.0


def test_a_rise_inside_the_cooldown_opens_a_new_alert_of_the_same_severity() -> None:
    scores = [4, 6, 0, 0, 20, 20, 0]  # alert peak 6; 20 >= 3 x 6 inside the 20 s cooldown
    off = _feed(CFG, scores)
    assert [m.status for m in off] == ["firing", "resolved"]  # the cooldown hides it
    assert [m.status for m in _feed(dataclasses.replace(CFG, rise=3.0), scores)] == [
        "firing",
        "resolved",
    ]  # rise is about open alerts only
    on = _feed(dataclasses.replace(CFG, cooldown_rise=3.0), scores)
    assert [m.status for m in on] == ["firing", "resolved", "firing", "resolved"]
    assert on[2].id != on[0].id and on[2].severity == "warning" and on[2].start_s == 1004.0
    # below rise x peak the cooldown holds
    quiet = _feed(dataclasses.replace(CFG, cooldown_rise=4.0), scores)
    assert [m.status for m in quiet] == ["firing", "resolved"]


@pytest.mark.parametrize("value", ["0.5", "1", "-2"])
@pytest.mark.parametrize("key", ["rise", "cooldown_rise"])
def test_rise_must_be_off_or_above_one(key, value) -> None:
    with pytest.raises(ConfigError, match=f"run.{key} must be"):
        RunConfig(**{key: float(value)})
