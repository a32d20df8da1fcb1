"""Webhook receiver failures: 500s, timeouts, refused connections and slow answers, then recovery.

Every alert arrives once the receiver is back, retries back off, a receiver answering 410 is
disabled with a clear log line, and the SQLite outbox survives a worker killed during the outage.
The default run uses outages of a few seconds; ``benchmarks/reliability_webhook_outage.py`` runs
the full minute.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import time
import uuid
from collections import Counter

import numpy as np
import pytest
from conftest import synthetic_ecg, write_record
from streaming.helpers import burst, start_worker

from ecgstream.sinks.outbox import Outbox
from ecgstream.sinks.webhook import WebhookConfig, WebhookDispatcher, new_secret
from ecgstream.streaming.kafka import ensure_topics, make_producer
from ecgstream.streaming.replay import plan_streams, publish

from .receivers import FlakyReceiver

T0 = 1_700_000_000.0
FAST = WebhookConfig(timeout_s=0.5, backoff_base_s=0.25, backoff_max_s=2.0, max_attempts=1000)


def _alerts(prefix: str, n: int) -> list[dict]:
    return [
        {"id": f"{prefix}-{i}", "kind": "anomaly", "stream": f"s{i % 3}", "score": 9.0}
        for i in range(n)
    ]


def test_every_alert_arrives_after_errors_timeouts_refusals_and_slowness(tmp_path):
    secret = new_secret()
    rx = FlakyReceiver(secret, mode="error", hold_s=1.0)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    results: list[str] = []
    d = WebhookDispatcher(outbox, {rx.url: secret}, FAST, results.append).start()
    phases = [("error", 3.0), ("timeout", 2.0), ("refused", 2.0), ("slow", 2.0)]
    ids: set[str] = set()
    t_start = time.time()
    try:
        for mode, seconds in phases:
            rx.set_mode(mode)
            batch = _alerts(mode, 5)
            outbox.put(batch, [rx.url])
            d.notify()
            ids |= {a["id"] for a in batch}
            time.sleep(seconds)
        rx.set_mode("ok")
        t_back = time.time()
        assert rx.wait_delivered(ids, timeout_s=15), f"missing {sorted(ids - rx.delivered())}"
        t_done = time.time()
    finally:
        d.stop(0)
        rx.close()
    counts = outbox.counts()
    assert (
        counts.get("delivered") == len(ids)
        and not counts.get("pending")
        and not counts.get("failed")
    )
    # retries back off: the attempts of an alert through the 3 s of 500s come further and further apart
    for i in range(5):
        times = [t for t in rx.attempts(f"error-{i}") if t < t_start + 3.0]
        gaps = np.diff(times)
        assert len(times) >= 3, times
        assert (np.diff(gaps) > -0.1).all(), f"retry gaps shrink: {gaps}"
        assert gaps[-1] >= 1.8 * gaps[0], f"no exponential backoff: {gaps}"
    n_requests = len(rx.requests)
    example = np.diff([t for t in rx.attempts("error-0") if t < t_start + 3.0]).round(2).tolist()
    print(
        f"{len(ids)} alerts through {sum(s for _, s in phases):.0f} s of failures: {n_requests} requests, "
        f"outcomes {dict(Counter(results))}; all delivered "
        f"{t_done - t_back:.2f} s after recovery; retry gaps of one alert during the 500s {example} s"
    )
    assert n_requests < 12 * len(ids), "retries hammer the receiver"


def test_a_receiver_answering_410_is_disabled_with_a_clear_log_line(tmp_path, caplog):
    secret = new_secret()
    gone, ok = FlakyReceiver(secret, mode="gone"), FlakyReceiver(secret, mode="ok")
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.put(_alerts("a", 5), [gone.url, ok.url])
    with caplog.at_level(logging.WARNING, logger="ecgstream"):
        d = WebhookDispatcher(outbox, {gone.url: secret, ok.url: secret}, FAST).start()
        try:
            assert ok.wait_delivered({f"a-{i}" for i in range(5)}, 10)
            outbox.put(_alerts("b", 3), [gone.url, ok.url])
            d.notify()
            assert ok.wait_delivered({f"b-{i}" for i in range(3)}, 10)
            time.sleep(0.5)
        finally:
            d.stop(0)
            gone.close()
            ok.close()
    assert len(gone.requests) == 1, "a disabled endpoint was called again"
    assert outbox.disabled_endpoints() == {gone.url: "410 Gone"}
    lines = [r.getMessage() for r in caplog.records if "410" in r.getMessage()]
    assert len(lines) == 1 and gone.url in lines[0] and "disabled" in lines[0]


def _outbox_state(path) -> tuple[int, int]:
    """(alerts stored, failed attempts so far), read from another process's outbox."""
    if not os.path.exists(path):
        return 0, 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        n = db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
        tried = db.execute("SELECT COALESCE(SUM(attempts), 0) FROM deliveries").fetchone()[0]
        return n, tried
    except sqlite3.OperationalError:
        return 0, 0
    finally:
        db.close()


@pytest.mark.integration
def test_outbox_survives_a_worker_killed_during_the_outage(broker, tmp_path, energy_model):
    n_streams = 4
    folder = tmp_path / "records"
    for i in range(n_streams):
        sig = burst(synthetic_ecg(16, 360, heart_rate=65 + 4 * i, seed=60 + i), 360, 5.0 + i, 2.0)
        write_record(folder, f"w{i}", sig, 360, ["MLII"])
    topic = f"wh-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker, [topic], 2)
    secret = new_secret()
    rx = FlakyReceiver(secret, mode="refused")  # the receiver is down from the start
    outbox = tmp_path / "outbox.sqlite"
    a = start_worker(broker, topic, energy_model, outbox, tmp_path / "a.log", rx.url, secret, 60)
    b = None
    try:
        publish(
            make_producer(broker),
            topic,
            plan_streams([folder]),
            speed=0,
            t_start=T0,
            progress=False,
        )
        deadline = time.time() + 60
        while time.time() < deadline and not (
            _outbox_state(outbox)[0] >= n_streams and _outbox_state(outbox)[1] >= 2
        ):
            time.sleep(0.3)
        stored, tried = _outbox_state(outbox)
        assert stored >= n_streams and tried >= 2, (tmp_path / "a.log").read_text()[-3000:]
        a.send_signal(signal.SIGKILL)  # worker dies while the receiver is still down
        a.wait(10)
        db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=5)
        stored_ids = {r[0] for r in db.execute("SELECT id FROM alerts")}
        db.close()
        rx.set_mode("ok")
        t_back = time.time()
        b = start_worker(
            broker, topic, energy_model, outbox, tmp_path / "b.log", rx.url, secret, 60
        )
        # the pending deliveries keep their backoff schedule across the restart (up to ~8 s here)
        assert rx.wait_delivered(stored_ids, timeout_s=45), (tmp_path / "b.log").read_text()[-3000:]
        time.sleep(1.0)
        b.send_signal(signal.SIGTERM)
        assert b.wait(60) == 0, (tmp_path / "b.log").read_text()[-3000:]
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
    box = Outbox(outbox)
    alerts = {x["id"]: x for x in box.alerts()}
    counts = box.counts()
    box.close()
    rx.close()
    assert {x["stream"] for x in alerts.values() if x["kind"] == "anomaly"} == {
        f"w{i}" for i in range(n_streams)
    }
    assert rx.delivered() == set(alerts), f"not delivered: {sorted(set(alerts) - rx.delivered())}"
    assert (
        counts.get("delivered") == len(alerts)
        and not counts.get("pending")
        and not counts.get("failed")
    )
    print(
        f"{len(alerts)} alerts stored during the outage ({tried} failed attempts before the kill), "
        f"all delivered after the restart, the last one "
        f"{max(t for t, *_ in rx.requests) - t_back:.1f} s after the receiver came back"
    )
