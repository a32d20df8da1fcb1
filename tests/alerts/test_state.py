"""The anomaly alert state machine, localisation, ids and technical conditions."""

from __future__ import annotations

import numpy as np

from ecgstream.alerts.state import AlertConfig, AnomalyMachine, alert_id, localise, severity_of
from ecgstream.alerts.technical import TechnicalConfig, TechnicalMachine, check_chunk

FS = 100.0


CFG = AlertConfig(min_windows=2, hysteresis=0.5, cooldown_s=5.0)


def _run(scores, cfg=CFG, ks=None):
    m = AnomalyMachine("bed-1", cfg, 3.0, "mmae", "1.0", ["MLII"])
    out = []
    for i, s in enumerate(scores):
        k = i if ks is None else ks[i]
        point = np.full(200, s)
        out += m.update(k, s, 1000.0 + k, 1002.0 + k, point, FS)
    return out


def test_min_windows_hysteresis_and_cooldown():
    scores = [0, 4, 0, 4, 4, 4, 2.8, 4, 0, 0, 4, 4, 0, 0, 0, 0, 0, 0, 0, 4, 4]
    alerts = [a for a in _run(scores) if a.status == "firing"]
    # one window above is not enough; 3-5 opens; 2.8 stays inside the hysteresis band;
    # 10-11 fall in the cooldown after the close at window 8; 19-20 open a second episode
    assert [a.window_index for a in alerts] == [3, 19]
    assert alerts[0].start_s == 1003.0 and alerts[0].end_s == 1006.0
    assert all(a.kind == "anomaly" and a.threshold == 3.0 for a in alerts)


def test_missing_windows_reset_the_pending_count():
    alerts = _run([4, 4], ks=[0, 2])  # not consecutive (a suppressed window in between)
    assert alerts == []


def test_ids_are_deterministic_and_distinct():
    a1, a2 = _run([4, 4]), _run([4, 4])
    assert a1[0].id == a2[0].id == alert_id("bed-1", 0, "mmae", "1.0", "anomaly")
    assert len({alert_id("bed-1", 0, "mmae", "1.0", k) for k in ("anomaly", "gap")}) == 2
    assert alert_id("bed-1", 0, "mmae", "1.0", "anomaly") != alert_id(
        "bed-1", 0, "mmae", "1.1", "anomaly"
    )


def test_severity_levels():
    assert severity_of(3.1, 3.0, 2.0) == "warning"
    assert severity_of(5.0, 3.0, 2.0) == "critical"
    alerts = _run([9, 9])
    assert alerts[0].severity == "critical" and alerts[0].to_dict()["severity"] == "critical"


def test_localisation_finds_the_high_span():
    point = np.zeros(200)
    point[120:140] = 5.0
    point[20:25] = 3.5
    spans = localise(point, 1000.0, FS, threshold=3.0, max_spans=1)
    assert spans == [[1001.2, 1001.4]]
    assert len(localise(point, 1000.0, FS, threshold=3.0)) == 2
    assert localise(np.zeros(200) + np.eye(1, 200, 50)[0], 0.0, FS, threshold=3.0) == [[0.4, 0.6]]


def test_adaptive_threshold_follows_the_streams_own_scores():
    cfg = AlertConfig(min_windows=1, adaptive=True, adaptive_quantile=0.99, adaptive_window=40)
    m = AnomalyMachine("s", cfg, 3.0, "m", "1", ["II"])
    rng = np.random.default_rng(0)
    for k in range(100):  # an unusual but steady stream scoring around 6
        m.update(k, 6 + rng.normal(0, 0.3), k, k + 2, np.zeros(10), FS)
    assert m.threshold > 6.0
    assert m.update(100, 6.1, 100, 102, np.zeros(10), FS) == []  # its normal is not an alert
    assert m.update(101, 15.0, 101, 103, np.zeros(10), FS) != []


def test_drift_alert_when_the_score_distribution_moves():
    cfg = AlertConfig(min_windows=1, threshold=100.0, drift=True)
    m = AnomalyMachine("s", cfg, 100.0, "m", "1", ["II"])
    rng = np.random.default_rng(1)
    kinds = []
    for k in range(600):
        s = rng.normal(0, 0.2) + (0 if k < 300 else 2.0)
        kinds += [a.kind for a in m.update(k, s, k, k + 2, np.zeros(10), FS)]
    assert "drift" in kinds


def test_technical_conditions():
    cfg = TechnicalConfig()
    rng = np.random.default_rng(0)
    ok = rng.normal(0, 0.3, size=(360, 2)).astype(np.float32)
    assert all(not leads for leads, _ in check_chunk(ok, cfg).values())
    off = ok.copy()
    off[:, 1] = np.nan
    assert check_chunk(off, cfg)["lead_off"][0] == [1]
    flat = ok.copy()
    flat[:, 0] = 0.2
    assert check_chunk(flat, cfg)["flat_line"][0] == [0]
    sat = ok.copy()
    sat[:50, 0] = 12.0
    assert check_chunk(sat, cfg)["saturation"][0] == [0]
    assert check_chunk(ok, cfg, clipped=np.array([0, 40]))["saturation"][0] == [1]


def test_technical_machine_alerts_once_per_episode():
    cfg = TechnicalConfig()
    tm = TechnicalMachine("s", "m", "1", ["MLII", "V1"])
    rng = np.random.default_rng(0)
    ok = rng.normal(0, 0.3, size=(360, 2)).astype(np.float32)
    off = ok.copy()
    off[:, 1] = np.nan
    seq = [ok, off, off, ok, off]
    alerts = [
        a for i, x in enumerate(seq) for a in tm.update(check_chunk(x, cfg), 10.0 + i, 11.0 + i)
    ]
    assert [(a.kind, a.start_s, a.leads) for a in alerts] == [
        ("lead_off", 11.0, ["V1"]),
        ("lead_off", 14.0, ["V1"]),
    ]
    assert alerts[0].to_dict()["type"] == "signal.technical"
    assert tm.gap(20.0, 22.0, "2 chunks", cfg)[0].kind == "gap"


def test_technical_machine_tells_whether_a_condition_is_active():
    cfg = TechnicalConfig()
    tm = TechnicalMachine("s", "m", "1", ["MLII", "V1"])
    ok = np.random.default_rng(0).normal(0, 0.3, size=(360, 2)).astype(np.float32)
    off = ok.copy()
    off[:, 1] = np.nan
    assert not tm.any_active
    for x, active in [(ok, False), (off, True), (off, True), (ok, False)]:
        tm.update(check_chunk(x, cfg), 10.0, 11.0)
        assert tm.any_active is active


def test_the_models_critical_threshold_sets_the_severity():
    assert severity_of(3.5, 3.0, 2.0, critical=3.4) == "critical"
    assert severity_of(3.3, 3.0, 2.0, critical=3.4) == "warning"
    assert (
        severity_of(3.5, 3.0, 2.0, critical=2.0) == "warning"
    )  # not above the threshold: margin rule
