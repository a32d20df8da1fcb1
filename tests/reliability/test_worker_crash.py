"""Worker crash: SIGKILL the only worker mid-stream, restart it on the same outbox and group.

Checked: every window of every stream is scored at least once (the restarted worker re-reads
from the committed offsets), no alert is lost (each injected burst has an alert at the
receiver), a re-sent alert carries the same id (receivers de-duplicate on ``webhook-id``), and
nothing is left pending in the SQLite outbox.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import defaultdict

import pytest
from conftest import synthetic_ecg, write_record
from sinks.receiver import Receiver
from streaming.helpers import burst, read_scores, start_worker, wait_until

from ecgstream.sinks.outbox import Outbox
from ecgstream.sinks.webhook import new_secret
from ecgstream.streaming.kafka import ensure_topics, make_producer
from ecgstream.streaming.replay import plan_streams, publish

pytestmark = pytest.mark.integration
T0 = 1_700_000_000.0
SECONDS = 30
N_STREAMS = 6


def _worker(name, broker, topic, model, tmp_path, url, secret, idle_s):
    return start_worker(
        broker,
        topic,
        model,
        tmp_path / "outbox.sqlite",
        tmp_path / f"{name}.log",
        url,
        secret,
        idle_s=idle_s,
        scores_out=tmp_path / f"{name}.jsonl",
    )


def _scores(path) -> list[tuple[str, int]]:
    return [(s["stream"], s["window"]) for s in read_scores(path)]


def test_sigkill_and_restart_loses_no_window_and_no_alert(broker, tmp_path, energy_model):
    folder = tmp_path / "records"
    bursts = {}
    for i in range(N_STREAMS):
        sig = synthetic_ecg(SECONDS, 360, heart_rate=58 + 5 * i, seed=70 + i)
        if i % 2 == 0:  # bursts early (before the kill) and late (after the restart)
            bursts[f"c{i}"] = 3.0 + 4.5 * i
            sig = burst(sig, 360, bursts[f"c{i}"], 2.0)
        write_record(folder, f"c{i}", sig, 360, ["MLII"])
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker, [topic], 3)
    secret = new_secret()
    rx = Receiver(secret)
    a = _worker("a", broker, topic, energy_model, tmp_path, rx.url, secret, 60)
    b = None
    try:
        assert wait_until(lambda: "assigned" in (tmp_path / "a.log").read_text(), 40), (
            tmp_path / "a.log"
        ).read_text()[-2000:]
        feeder = threading.Thread(
            target=publish,
            args=(make_producer(broker), topic, plan_streams([folder])),
            kwargs=dict(speed=3.0, t_start=T0, progress=False),
        )
        feeder.start()
        assert wait_until(lambda: len(_scores(tmp_path / "a.jsonl")) >= 6 * N_STREAMS, 40), (
            "worker a scored too little"
        )
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        t_kill = time.time()
        scored_a = _scores(tmp_path / "a.jsonl")
        feeder.join(60)
        b = _worker("b", broker, topic, energy_model, tmp_path, rx.url, secret, 8)
        assert b.wait(120) == 0, (tmp_path / "b.log").read_text()[-3000:]
        t_done = time.time()
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
    scored_b = _scores(tmp_path / "b.jsonl")
    scored = set(scored_a) | set(scored_b)
    a0 = int(T0 * 100)  # window ids: absolute start samples at 100 Hz, hop 100
    n_windows = SECONDS - 1  # 2 s windows every 1 s
    expected = {(f"c{i}", a0 + 100 * j) for i in range(N_STREAMS) for j in range(n_windows)}
    missing = sorted(expected - scored)
    assert not missing, f"{len(missing)} windows never scored, e.g. {missing[:5]}"
    rescored = len(set(scored_a) & set(scored_b))
    # alerts: all delivered, none lost, re-sent ones with the same id
    box = Outbox(tmp_path / "outbox.sqlite")
    stored = {x["id"]: x for x in box.alerts()}
    counts = box.counts()
    box.close()
    assert wait_until(lambda: set(stored) <= set(rx.alerts), 20), (
        "an alert in the outbox never reached the receiver"
    )
    rx.close()
    assert all(ok for *_, ok in rx.received), "a signature did not verify"
    alerts = rx.alerts
    by_window = defaultdict(set)
    for wid, x in alerts.items():
        by_window[(x["stream"], x["window_index"], x["kind"], x["sequence"])].add(wid)
    assert all(len(ids) == 1 for ids in by_window.values()), "one change delivered under two ids"
    for stream, at in bursts.items():
        assert any(
            x["stream"] == stream
            and x["kind"] == "anomaly"
            and x["start_s"] - 1 <= T0 + at + 1
            and x["end_s"] >= T0 + at
            for x in alerts.values()
        ), f"the burst of {stream} at {at} s has no alert"
    assert set(alerts) == set(stored)
    assert not counts.get("pending") and not counts.get("failed"), counts
    requests = len(rx.received)
    print(
        f"killed after {len(scored_a)} windows; restart re-scored {rescored} windows; {len(expected)} windows "
        f"all scored; {len(alerts)} alerts, {requests} webhook requests ({requests - len(alerts)} duplicates, "
        f"same ids); outbox {counts}; recovery {t_done - t_kill:.1f} s"
    )
