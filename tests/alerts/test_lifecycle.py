"""Alert lifecycle: firing, escalated, updated, resolved; each change its own durable message."""

from __future__ import annotations

import json

import numpy as np

from ecgstream.alerts.state import AlertConfig, AnomalyMachine
from ecgstream.sinks.jsonl import JsonLinesSink
from ecgstream.sinks.outbox import Outbox
from ecgstream.sinks.router import AlertRouter
from ecgstream.sinks.webhook import WebhookConfig, new_secret
from tests.sinks.receiver import Receiver

FS = 100.0
CFG = AlertConfig(min_windows=2, hysteresis=0.5, cooldown_s=20.0, sustain_s=0.0, update_s=1e9)


def _machine(cfg: AlertConfig = CFG) -> AnomalyMachine:
    # warning at 3, critical at 10 (the model's two levels)
    return AnomalyMachine("bed-1", cfg, 3.0, "m", "1", ["MLII"], critical=10.0)


def _feed(m: AnomalyMachine, scores: list[float], points: list[np.ndarray] | None = None) -> list:
    """Windows of 2 s every 1 s starting at t = 1000 s."""
    out = []
    for k, s in enumerate(scores):
        point = np.full(200, float(s)) if points is None else points[k]
        out += m.update(k, float(s), 1000.0 + k, 1002.0 + k, point, FS)
    return out


def test_opens_escalates_and_resolves_with_one_stable_id() -> None:
    msgs = _feed(_machine(), [0, 4, 4, 4, 12, 12, 4, 0, 0])
    assert [m.status for m in msgs] == ["firing", "escalated", "resolved"]
    assert len({m.id for m in msgs}) == 1  # the alert's id is stable
    assert [m.event_id for m in msgs] == [f"{msgs[0].id}.{i}" for i in range(3)]
    firing, escalated, resolved = msgs
    assert firing.severity == "warning" and firing.start_s == 1001.0 and firing.at_s == 1004.0
    assert escalated.severity == "critical" and escalated.previous_severity == "warning"
    assert escalated.at_s == 1006.0  # decided at the end of the first critical window
    # resolved at the first window below threshold - hysteresis; ends with the last one above
    assert resolved.end_s == 1008.0 and resolved.at_s == 1009.0 and resolved.severity == "critical"
    body = resolved.to_dict()
    assert body["id"] == f"{resolved.id}.2" and body["alert_id"] == resolved.id
    assert body["status"] == "resolved" and body["end_s"] == 1008.0


def test_a_sustained_warning_becomes_critical() -> None:
    cfg = AlertConfig(min_windows=2, sustain_s=6.0, update_s=1e9)
    msgs = _feed(_machine(cfg), [4] * 8)
    assert [(m.status, m.severity) for m in msgs] == [
        ("firing", "warning"),
        ("escalated", "critical"),
    ]
    assert msgs[1].at_s - msgs[0].start_s >= 6.0 and "sustained" in msgs[1].detail


def test_new_spans_inside_an_open_alert_are_reported() -> None:
    def spike(at: int) -> np.ndarray:
        p = np.zeros(200)
        p[at : at + 10] = 5.0
        return p

    # the same beat region twice (no update), then a new region 1 s later in the stream
    points = [spike(50), spike(50), spike(150), spike(50)]
    cfg = AlertConfig(min_windows=2, sustain_s=0.0, update_s=0.0)
    msgs = _feed(_machine(cfg), [5, 5, 5, 5], points)
    assert [m.status for m in msgs] == ["firing", "updated"]
    assert msgs[1].spans == sorted(msgs[0].spans + [[1003.5, 1003.6]])


def test_cooldown_never_hides_a_more_severe_event() -> None:
    # a warning episode resolves; inside its cooldown a warning run stays quiet but a critical
    # one opens a new alert at once
    msgs = _feed(_machine(), [4, 4, 0, 4, 4, 0, 12, 12])
    assert [(m.status, m.severity) for m in msgs] == [
        ("firing", "warning"),
        ("resolved", "warning"),
        ("firing", "critical"),
    ]
    assert msgs[2].start_s == 1006.0 and msgs[2].id != msgs[0].id


def test_replay_gives_the_same_messages() -> None:
    scores = [0, 4, 4, 12, 12, 0, 0, 4, 4, 4, 0]
    a = [m.to_dict() for m in _feed(_machine(), scores)]
    b = [m.to_dict() for m in _feed(_machine(), scores)]
    assert a == b and len({m["id"] for m in a}) == len(a)


def test_every_change_is_delivered_signed_and_deduplicated(tmp_path) -> None:
    """The real outbox, the JSON lines sink and a real webhook receiver on localhost."""
    secret = new_secret()
    rx = Receiver(secret)
    box = Outbox(tmp_path / "outbox.sqlite")
    router = AlertRouter(
        outbox=box,
        webhook_urls=[rx.url],
        webhook_secret=secret,
        jsonl=JsonLinesSink(tmp_path / "alerts.jsonl"),
        webhook_cfg=WebhookConfig(backoff_base_s=0.05),
    )
    try:
        msgs = [m.to_dict() for m in _feed(_machine(), [0, 4, 4, 12, 12, 0, 0])]
        assert [m["status"] for m in msgs] == ["firing", "escalated", "resolved"]
        assert router.write(msgs) == 3
        assert router.write(msgs) == 0  # redelivered: every change is already durable
        assert rx.wait_for(3, 20)
    finally:
        router.close()
        rx.close()
    received = rx.received
    assert len(received) == 3 and all(ok for *_, ok in received)
    assert {h["webhook-id"] for _, h, _, _ in received} == {m["id"] for m in msgs}
    assert {b["alert_id"] for _, _, b, _ in received} == {msgs[0]["alert_id"]}
    assert sorted(b["sequence"] for _, _, b, _ in received) == [0, 1, 2]
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["firing", "escalated", "resolved"] * 2
    stored = Outbox(tmp_path / "outbox.sqlite").alerts()
    assert [x["status"] for x in stored] == ["firing", "escalated", "resolved"]


def test_a_run_too_short_to_alert_is_remembered_with_why() -> None:
    m = _machine()
    assert _feed(m, [0, 4, 0, 0]) == []
    assert m.near_misses == [(1001.0, 1)]  # above the threshold for 1 window, needs 2
    assert m.why_not() == ""
    m.update(4, 4.0, 1004.0, 1006.0, np.full(200, 4.0), FS)
    assert m.why_not() == "above threshold for 1 window, needs 2 in a row"
