"""The alert policy is set in one place, ``[run]`` (TOML, environment, flags), and checked."""

from __future__ import annotations

import numpy as np
import pytest

from ecgstream.alerts.state import AlertConfig, AnomalyMachine
from ecgstream.cli import build_parser
from ecgstream.cli.options import config_flags
from ecgstream.config import ConfigError, RunConfig, load
from ecgstream.streaming.worker import alert_config

nk = pytest.importorskip("neurokit2")
FS = 100.0


def _machine(cfg: RunConfig) -> AnomalyMachine:
    return AnomalyMachine("bed", alert_config(cfg), 4.0, "m", "1", ["MLII"], step=500)


def _above(machine: AnomalyMachine, seconds: float, score: float = 5.0) -> list:
    """Windows of 10 s every 5 s, all scored ``score`` (above the threshold 4, not critical)."""
    out = []
    for i in range(int(seconds // 5)):
        out += machine.update(i * 500, score, i * 5.0, i * 5.0 + 10.0, None, FS)
    return out


def _rate_alerts(cfg: RunConfig, bpm: float) -> list:
    x = nk.ecg_simulate(
        duration=60, sampling_rate=int(FS), heart_rate=bpm, method="simple", random_state=1
    )
    w = np.stack([x[a : a + 1000] for a in range(0, len(x) - 999, 500)])
    rhythm = _machine(cfg).rhythm
    assert rhythm is not None
    return rhythm.update(np.arange(len(w)) * 500, w[:, None], np.arange(len(w)) * 5.0, FS)


def test_defaults_are_the_alert_policys_own() -> None:
    policy = RunConfig().alert_policy()
    assert policy == AlertConfig(rhythm_config=policy.rhythm_config)
    assert policy.rhythm_config.tachy_bpm == 120.0 and policy.sustain_s == 30.0


def test_toml_environment_and_flags_set_the_policy(tmp_path) -> None:
    toml = tmp_path / "ecgstream.toml"
    toml.write_text("[run]\nsustain_s = 10.0\ntachy_bpm = 90\nrhythm = true\ncooldown_s = 3\n")
    env = {"ECGSTREAM_RUN__UPDATE_S": "4", "ECGSTREAM_RUN__PAUSE_S": "2.5"}
    args = build_parser("run").parse_args(["run", "--min-windows", "1", "--cooldown-s", "7"])
    cfg = load(RunConfig, "run", toml, config_flags(args, RunConfig), environ=env)
    policy = cfg.alert_policy()
    assert (policy.sustain_s, policy.update_s, policy.min_windows, policy.cooldown_s) == (
        10.0,
        4.0,
        1,
        7.0,  # the flag wins over the file
    )
    assert policy.rhythm_config.tachy_bpm == 90.0 and policy.rhythm_config.pause_s == 2.5

    # the settings reach the state machines: escalation after 10 s above, not the default 30 s
    msgs = _above(_machine(cfg), 15.0)
    assert [m.status for m in msgs] == ["firing", "escalated"]
    assert msgs[1].severity == "critical" and "sustained" in msgs[1].detail
    assert [m.status for m in _above(_machine(RunConfig(min_windows=1)), 15.0)] == ["firing"]

    # ... and the rhythm thresholds: 100 bpm is a tachycardia at 90 bpm, not at the default 120
    assert [a.kind for a in _rate_alerts(cfg, 100) if a.status == "firing"] == ["tachycardia"]
    assert _rate_alerts(RunConfig(), 100) == []


def test_rhythm_alerts_can_be_turned_off_by_flag_and_environment() -> None:
    args = build_parser("run").parse_args(["run", "--no-rhythm"])
    assert load(RunConfig, "run", None, config_flags(args, RunConfig), environ={}).rhythm is False
    args = build_parser("run").parse_args(["run"])
    assert load(RunConfig, "run", None, config_flags(args, RunConfig), environ={}).rhythm is True
    cfg = load(RunConfig, "run", None, {}, environ={"ECGSTREAM_RUN__RHYTHM": "off"})
    assert _machine(cfg).rhythm is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("sustain_s", "-1", "run.sustain_s must be at least 0"),
        ("update_s", "nan", "run.update_s must be a finite number"),
        ("min_windows", "0", "run.min_windows must be at least 1"),
        ("cooldown_s", "-5", "run.cooldown_s must be at least 0"),
        ("irregular_below", "1.5", "run.irregular_below must be between 0 and 1"),
        ("tachy_critical_bpm", "100", "run.tachy_bpm (120) must not be above tachy_critical_bpm"),
        ("brady_bpm", "130", "run.brady_bpm (130) must not be above tachy_bpm"),
        ("pause_s", "0", "run.pause_s must be above 0"),
        ("rate_windows", "0", "run.rate_windows must be at least 1"),
    ],
)
def test_a_value_out_of_range_is_an_error_naming_its_field(tmp_path, key, value, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(RunConfig, "run", None, {}, environ={f"ECGSTREAM_RUN__{key.upper()}": value})
    toml = tmp_path / "ecgstream.toml"
    toml.write_text(f"[run]\n{key} = {value if value != 'nan' else 'nan'}\n")
    with pytest.raises(ConfigError, match=f"run.{key}|run.tachy_bpm|run.brady_bpm"):
        load(RunConfig, "run", toml, {}, environ={})


def test_a_misspelt_policy_key_is_an_error(tmp_path) -> None:
    toml = tmp_path / "ecgstream.toml"
    toml.write_text("[run]\nsustain = 10\n")
    with pytest.raises(ConfigError, match="unknown keys \\['sustain'\\]"):
        load(RunConfig, "run", toml, {}, environ={})
