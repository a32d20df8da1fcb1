"""Two worker processes in one group; one is SIGKILLed mid-stream and the other takes over."""

from __future__ import annotations

import signal
import threading
import time
import uuid

import pytest
from conftest import synthetic_ecg, write_record
from sinks.receiver import Receiver

from ecgstream.sinks.webhook import new_secret
from ecgstream.streaming.kafka import ensure_topics, make_producer
from ecgstream.streaming.replay import plan_streams, publish

from .helpers import burst, read_scores, start_worker, wait_until

pytestmark = pytest.mark.integration
T0 = 1_700_000_000.0
SECONDS = 40
N_STREAMS = 8


def _worker(name, broker, topic, model, tmp_path, rx, secret):
    return start_worker(
        broker,
        topic,
        model,
        tmp_path / f"{name}.sqlite",
        tmp_path / f"{name}.log",
        rx.url,
        secret,
        idle_s=10,
        scores_out=tmp_path / f"{name}.jsonl",
    )


def _scores(path):
    return {(s["stream"], s["window"]) for s in read_scores(path)}


def test_sigkill_one_worker_the_other_takes_over(broker, tmp_path, energy_model):
    folder = tmp_path / "records"
    for i in range(N_STREAMS):
        sig = synthetic_ecg(SECONDS, 360, heart_rate=60 + 3 * i, seed=10 + i, n_leads=1)
        if i % 2 == 0:  # bursts before and after the kill
            sig = burst(sig, 360, 6.0 + 3 * i, 2.0)
        write_record(folder, f"s{i}", sig, 360, ["MLII"])
    topic = f"fo-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker, [topic], 4)
    secret = new_secret()
    rx = Receiver(secret)
    a = _worker("a", broker, topic, energy_model, tmp_path, rx, secret)
    b = _worker("b", broker, topic, energy_model, tmp_path, rx, secret)
    try:
        # both members joined: each was assigned a share of the partitions
        joined = wait_until(
            lambda: all("assigned" in (tmp_path / f"{n}.log").read_text() for n in "ab"), 40
        )
        assert joined, (tmp_path / "a.log").read_text()[-2000:] + (tmp_path / "b.log").read_text()[
            -2000:
        ]
        time.sleep(2.0)
        producer = make_producer(broker)
        streams = plan_streams([folder])
        feeder = threading.Thread(
            target=publish,
            args=(producer, topic, streams),
            kwargs=dict(speed=4.0, t_start=T0, progress=False),
        )
        feeder.start()
        assert wait_until(lambda: len(_scores(tmp_path / "a.jsonl")) >= 10, 30), (
            "worker a scored nothing"
        )
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        feeder.join(60)
        assert b.wait(90) == 0, (tmp_path / "b.log").read_text()[-3000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    scored = _scores(tmp_path / "a.jsonl") | _scores(tmp_path / "b.jsonl")
    assert _scores(tmp_path / "b.jsonl"), "worker b scored nothing"
    a0 = int(T0 * 100)  # window ids: absolute start samples at 100 Hz, hop 100
    n_windows = (SECONDS * 100 - 200) // 100 + 1
    missing = [
        (f"s{i}", a0 + 100 * j)
        for i in range(N_STREAMS)
        for j in range(n_windows)
        if (f"s{i}", a0 + 100 * j) not in scored
    ]
    assert not missing, f"{len(missing)} windows never scored, e.g. {missing[:5]}"
    # receivers de-duplicate on webhook-id; a change of an alert sent by both workers has one id
    assert wait_until(
        lambda: (
            {a["stream"] for a in rx.alerts.values()} >= {f"s{i}" for i in range(0, N_STREAMS, 2)}
        ),
        20,
    )
    rx.close()
    alerts = rx.alerts
    assert all(ok for *_, ok in rx.received)
    by_window: dict = {}
    for wid, alert in alerts.items():
        key = (alert["stream"], alert["window_index"], alert["kind"], alert["sequence"])
        by_window.setdefault(key, set()).add(wid)
    assert all(len(ids) == 1 for ids in by_window.values())
    # every burst produced an alert covering it
    for i in range(0, N_STREAMS, 2):
        t_burst = T0 + 6.0 + 3 * i
        assert any(
            a["stream"] == f"s{i}" and a["start_s"] - 1 <= t_burst + 1 and a["end_s"] >= t_burst
            for a in alerts.values()
        ), f"no alert for the burst of s{i}"


def test_sigterm_finishes_the_batch_commits_and_exits(broker, tmp_path, energy_model):
    from kafka import KafkaConsumer, TopicPartition

    folder = tmp_path / "records"
    write_record(folder, "t0", synthetic_ecg(15, 360, seed=3, n_leads=1), 360, ["MLII"])
    topic = f"term-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker, [topic], 1)
    publish(
        make_producer(broker), topic, plan_streams([folder]), speed=0, t_start=T0, progress=False
    )
    secret = new_secret()
    rx = Receiver(secret)
    proc = _worker("w", broker, topic, energy_model, tmp_path, rx, secret)
    try:
        assert wait_until(lambda: len(_scores(tmp_path / "w.jsonl")) >= 14, 40), (
            tmp_path / "w.log"
        ).read_text()[-2000:]
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        rx.close()
    text = (tmp_path / "w.log").read_text()
    assert "windows scored: 14" in text and "revoked" in text  # summary printed, group left
    c = KafkaConsumer(bootstrap_servers=broker, group_id=f"g-{topic}", enable_auto_commit=False)
    committed = c.committed(TopicPartition(topic, 0))
    c.close()
    # everything is scored; only the chunk an unfinished window would need stays uncommitted
    assert committed is not None and 13 <= committed <= 15
