"""The Kafka worker against a real broker (Tansu), real ONNX Runtime and a real webhook receiver."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import MMAE_MODEL, SHIPPED_MODEL, synthetic_ecg, write_record
from kafka import KafkaConsumer
from sinks.receiver import Receiver

from ecgstream.config import ConfigError, RunConfig
from ecgstream.runtime.scorer import Scorer
from ecgstream.signals.preprocess import preprocess
from ecgstream.signals.records import read_record, select_leads
from ecgstream.signals.windows import window_starts
from ecgstream.sinks.webhook import new_secret
from ecgstream.streaming.kafka import ensure_topics, make_producer
from ecgstream.streaming.replay import plan_streams, publish
from ecgstream.streaming.wire import Chunk, encode_binary, encode_json
from ecgstream.streaming.worker import Worker

from .helpers import burst, read_scores, wait_until

pytestmark = pytest.mark.integration
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Four 2-lead 360 Hz records of 20 s; ``burst0`` and ``burst1`` carry a 2 s noise burst."""
    folder = tmp_path_factory.mktemp("records")
    for i, name in enumerate(["calm0", "calm1", "burst0", "burst1"]):
        sig = synthetic_ecg(20, 360, heart_rate=60 + 7 * i, seed=i, n_leads=2)
        if name.startswith("burst"):
            sig = burst(sig, 360, 11.0, 2.0)
        write_record(folder, name, sig, 360, ["MLII", "V1"])
    (folder / "RECORDS").write_text("calm0\ncalm1\nburst0\nburst1\n")
    return folder


def _cfg(broker, tmp_path, **kw) -> RunConfig:
    topic = f"ecg-{uuid.uuid4().hex[:8]}"
    base = dict(
        bootstrap=broker,
        topic=topic,
        group=f"g-{topic}",
        dlq_topic=f"{topic}.dlq",
        partitions=4,
        outbox=str(tmp_path / "outbox.sqlite"),
        alerts_out="",
        poll_timeout_ms=100,
        min_windows=1,
    )
    base.update(kw)
    return RunConfig(**base)


def _start(worker: Worker) -> threading.Thread:
    t = threading.Thread(target=worker.run, kwargs={"max_s": 60}, daemon=True)
    t.start()
    return t


def _consume_all(broker, topic, n, timeout_s=20.0):
    c = KafkaConsumer(
        topic,
        bootstrap_servers=broker,
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=1000,
    )
    out, deadline = [], time.time() + timeout_s
    while len(out) < n and time.time() < deadline:
        for batch in c.poll(500).values():
            out.extend(batch)
    c.close()
    return out


def test_streams_through_the_worker_reach_the_webhook_signed(
    broker, tmp_path, records, energy_model
):
    secret = new_secret()
    rx = Receiver(secret)
    cfg = _cfg(
        broker,
        tmp_path,
        webhook_urls=[rx.url],
        webhook_secret=secret,
        alerts_topic="alerts-" + uuid.uuid4().hex[:6],
    )
    worker = Worker(cfg, Scorer(energy_model))
    thread = _start(worker)
    producer = make_producer(broker)
    ensure_topics(broker, [cfg.topic], 4)
    publish(producer, cfg.topic, plan_streams([records]), speed=0, t_start=T0, progress=False)
    try:
        assert rx.wait_for(2, timeout_s=40), "no alerts arrived at the receiver"
        time.sleep(1.0)
    finally:
        worker.stop()
        thread.join(30)
        rx.close()
    assert not thread.is_alive()
    assert all(ok for *_, ok in rx.received), "a webhook signature did not verify"
    alerts = rx.alerts
    assert {a["stream"] for a in alerts.values()} == {"burst0", "burst1"}
    for wid, a in alerts.items():
        assert wid == a["id"] and a["kind"] == "anomaly" and a["model"]["name"] == "energy-test"
        # the 2 s burst at 11 s of the stream is inside the alert's localisation
        span = a["localisation"]["spans"][0]
        assert T0 + 9.5 <= span[0] <= T0 + 13.5
    assert worker.summary.windows >= 4 * 18 and worker.summary.messages == 80
    topic_alerts = _consume_all(broker, cfg.alerts_topic, len(alerts))
    assert {json.loads(r.value)["id"] for r in topic_alerts} == set(alerts)


def test_malformed_messages_go_to_the_dead_letter_topic(broker, tmp_path, energy_model):
    cfg = _cfg(broker, tmp_path, scores_out=str(tmp_path / "scores.jsonl"))
    ensure_topics(broker, [cfg.topic, cfg.dlq_topic], 1)
    worker = Worker(cfg, Scorer(energy_model))
    thread = _start(worker)
    producer = make_producer(broker)
    sig = synthetic_ecg(10, 250, seed=3, n_leads=1)
    bad = [
        (b"m1", b"\x00garbage"),
        (b"m1", b'{"stream": "m1", "seq": 0}'),
        (b"other", encode_json(Chunk("m1", 99, T0, 250.0, ["II"], sig[:250]))),
    ]
    for i in range(10):
        good = Chunk("m1", i, T0 + i, 250.0, ["II"], sig[i * 250 : (i + 1) * 250])
        producer.send(cfg.topic, key=b"m1", value=encode_binary(good))
        if i < len(bad):
            producer.send(cfg.topic, key=bad[i][0], value=bad[i][1])
    producer.flush()
    dead = _consume_all(broker, cfg.dlq_topic, 3, timeout_s=40)
    worker.stop()
    thread.join(30)
    reasons = sorted(dict(r.headers)["ecgstream-dlq-reason"].decode() for r in dead)
    assert reasons == ["key_mismatch", "missing_field", "unknown_encoding"]
    for r in dead:
        h = dict(r.headers)
        assert h["ecgstream-original-topic"].decode() == cfg.topic
        assert int(h["ecgstream-original-offset"]) in (1, 3, 5)
    scored = [json.loads(line) for line in Path(cfg.scores_out).read_text().splitlines()]
    assert (
        len({s["window"] for s in scored}) == 9
    )  # 10 s of 2 s windows every 1 s: all good ones scored
    assert worker.summary.dlq == {"unknown_encoding": 1, "missing_field": 1, "key_mismatch": 1}


def test_a_message_too_large_to_dead_letter_is_skipped_and_the_partition_goes_on(
    broker, tmp_path, energy_model
):
    """A 9 MiB message (above the wire limit, within what the consumer fetches) is
    dead-lettered; a 20 MiB one (above what the dead-letter producer may send) is logged with
    its offset, counted and skipped. Neither stops the worker, and the valid chunks behind them
    are scored (issue 24: one 9 MiB message crash-looped the worker)."""
    from kafka import KafkaProducer

    cfg = _cfg(broker, tmp_path, scores_out=str(tmp_path / "scores.jsonl"))
    ensure_topics(broker, [cfg.topic, cfg.dlq_topic], 1)
    big = KafkaProducer(bootstrap_servers=broker, max_request_size=64 * 1024 * 1024)
    sig = synthetic_ecg(10, 250, seed=5, n_leads=1)
    for i in range(10):
        good = Chunk("m2", i, T0 + i, 250.0, ["II"], sig[i * 250 : (i + 1) * 250])
        big.send(cfg.topic, key=b"m2", value=encode_binary(good)).get(30)
        if i == 4:
            big.send(cfg.topic, key=b"m2", value=b"{" + b" " * (9 << 20)).get(30)
            big.send(cfg.topic, key=b"m2", value=b"{" + b" " * (20 << 20)).get(30)
    big.close()
    worker = Worker(cfg, Scorer(energy_model))
    errors: list[BaseException] = []

    def run():
        try:
            worker.run(max_s=60)
        except BaseException as exc:  # the thread's failure is the test's
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: worker.summary.messages >= 12 or not thread.is_alive(), 60)
        dead = _consume_all(broker, cfg.dlq_topic, 1, timeout_s=20)
        # committed past both large messages (up to what the next window still needs)
        assert wait_until(lambda: worker._committed.get(0, 0) > 6, 20)
    finally:
        worker.stop()
        thread.join(30)
    assert not errors, f"the worker stopped: {errors[0]!r}"
    assert len(dead) == 1 and len(dead[0].value) == (9 << 20) + 1
    h = dict(dead[0].headers)
    assert h["ecgstream-dlq-reason"] == b"too_large" and h["ecgstream-original-offset"] == b"5"
    assert worker.metrics.dlq_failed.labels("too_large")._value.get() == 1
    assert worker.metrics.dlq.labels("too_large")._value.get() == 1
    assert worker.metrics.messages.labels("skipped")._value.get() == 1
    assert worker.summary.skipped == {"too_large": 1} and worker.summary.dlq == {"too_large": 1}
    scored = read_scores(Path(cfg.scores_out))
    assert len({s["window"] for s in scored}) == 9  # every window of the 10 valid chunks


SHIPPED = {"shipped": SHIPPED_MODEL, "mmae": MMAE_MODEL}
MODELS = ["energy"] + [name for name, path in SHIPPED.items() if path.exists()]


@pytest.mark.parametrize("which", MODELS)
def test_offline_and_streaming_scores_agree(broker, tmp_path, records, energy_model, which):
    model = energy_model if which == "energy" else SHIPPED[which]
    scorer = Scorer(model)
    rec = read_record(records / "burst0")
    offline = scorer.score_record(rec)
    cfg = _cfg(broker, tmp_path, scores_out=str(tmp_path / "scores.jsonl"), model=str(model))
    ensure_topics(broker, [cfg.topic], 4)
    producer = make_producer(broker)
    for i in range(int(rec.duration_s)):  # 1 s chunks, float32 frames
        c = Chunk("p", i, T0 + i, rec.fs, rec.leads, rec.signal[i * 360 : (i + 1) * 360])
        producer.send(cfg.topic, key=b"p", value=encode_binary(c, sample_type="float32"))
    producer.flush()
    worker = Worker(cfg, scorer)
    thread = _start(worker)
    spec = scorer.spec
    a0 = int(T0 * spec.fs)
    deadline = time.time() + 40
    streamed: dict[int, float] = {}
    while time.time() < deadline and len(streamed) < len(offline.window_score) - 1:
        time.sleep(0.3)
        if (tmp_path / "scores.jsonl").exists():
            streamed = {
                (s["window"] - a0) // spec.hop: s["score"]
                for s in map(json.loads, Path(cfg.scores_out).read_text().splitlines())
            }
    worker.stop()
    thread.join(30)
    x, _ = preprocess(select_leads(rec, spec.leads).signal, rec.fs, spec.preprocess_config)
    starts = window_starts(len(x), spec.window, spec.hop)  # the offline windows at the model rate
    regular = {i: s for i, s in enumerate(offline.window_score) if starts[i] == i * spec.hop}
    common = sorted(set(streamed) & set(regular))
    assert len(common) >= len(offline.window_score) - 2
    got = np.array([streamed[i] for i in common])
    want = np.array([regular[i] for i in common], dtype=np.float64)
    diff = np.abs(got - want)
    print(f"parity {which}: {len(common)} windows, max abs diff {diff.max():.2e}")
    # 1e-4 absolute, or float32 resolution for large scores (the burst windows score ~1e4,
    # where one float32 step is ~1e-3)
    bad = diff > np.maximum(1e-4, 1e-6 * np.abs(want))
    assert not bad.any(), (
        f"offline and streamed scores differ: {list(zip(got[bad], want[bad], strict=True))}"
    )


def test_a_live_stream_is_scored_with_the_stream_step_from_its_first_window(
    broker, tmp_path, records
):
    """Chunks published one by one (10x real time) reach the worker in separate polls: one
    primer is computed a hop before the stream's first window, every window then goes through
    the shipped model's stream step, and the scores equal the whole graph's offline."""
    scorer = Scorer(SHIPPED_MODEL)
    assert scorer.stepper is not None
    rec = read_record(records / "burst0")
    offline = scorer.score_record(rec)
    cfg = _cfg(broker, tmp_path, scores_out=str(tmp_path / "scores.jsonl"),
               model=str(SHIPPED_MODEL), poll_timeout_ms=20)  # fmt: skip
    ensure_topics(broker, [cfg.topic], 4)
    worker = Worker(cfg, scorer)
    thread = _start(worker)
    try:
        assert wait_until(lambda: bool(worker.consumer and worker.consumer.assignment()), 40)
        producer = make_producer(broker)
        for i in range(int(rec.duration_s)):
            c = Chunk("p", i, T0 + i, rec.fs, rec.leads, rec.signal[i * 360 : (i + 1) * 360])
            producer.send(cfg.topic, key=b"p", value=encode_binary(c, sample_type="float32"))
            producer.flush()
            time.sleep(0.1)  # a primer needs its hop's chunks in before the window's
        assert wait_until(lambda: worker.summary.messages == int(rec.duration_s), 40, step=0.05)
    finally:
        worker.stop()
        thread.join(30)
    scored = read_scores(Path(cfg.scores_out))
    stepped = worker.metrics.stream_step
    assert stepped.labels("primer")._value.get() == 1
    assert stepped.labels("window")._value.get() == len(scored) >= 2
    spec = scorer.spec
    streamed = {(r["window"] - int(T0 * spec.fs)) // spec.hop: r["score"] for r in scored}
    got = np.array([streamed[i] for i in sorted(streamed)])
    want = offline.window_score[sorted(streamed)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _committed(broker, cfg) -> dict[int, int]:
    from kafka.structs import TopicPartition

    c = KafkaConsumer(bootstrap_servers=broker, group_id=cfg.group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(cfg.topic, p)) for p in range(cfg.partitions)}
    finally:
        c.close()


def test_offsets_are_committed_at_most_every_interval_and_all_when_idle(
    broker, tmp_path, records, energy_model
):
    commits, scores = {}, {}
    variants = {  # name: (commit interval ms, overlap_inference, inference_depth)
        "every batch, overlapped": (0, True, 1),
        "interval, inline": (60_000, False, 1),  # the inline path (one core) once too
        "interval, two calls in flight": (60_000, True, 2),
    }
    for name, (interval, overlap, depth) in variants.items():
        tag = len(commits)
        cfg = _cfg(
            broker, tmp_path, commit_interval_ms=interval, max_poll_records=4,
            outbox=str(tmp_path / f"outbox-{tag}.sqlite"),
            overlap_inference=overlap, inference_depth=depth,
            scores_out=str(tmp_path / f"scores-{tag}.jsonl"),
        )  # fmt: skip
        ensure_topics(broker, [cfg.topic], 4)
        publish(make_producer(broker), cfg.topic, plan_streams([records]), speed=0, t_start=T0,
                progress=False)  # fmt: skip
        worker = Worker(cfg, Scorer(energy_model))
        thread = _start(worker)
        try:
            assert wait_until(lambda w=worker: w.summary.messages == 80, 40, step=0.05)
            time.sleep(1.5)  # idle: the worker commits what is durable
            targets = worker._commit_targets()
            commits[name] = worker.metrics.commits.labels("ok")._value.get()
            # still running, idle, nothing in flight: every partition is committed up to what
            # windows still need (read before stopping, whose own commit would hide a miss)
            committed = _committed(broker, cfg)
        finally:
            worker.stop()
            thread.join(30)
        scores[name] = sorted(
            (r["stream"], r["window"], r["score"]) for r in read_scores(Path(cfg.scores_out))
        )
        assert {p: committed[p] for p in targets} == targets, name
    # 80 chunks in polls of at most 4: one commit per batch, against a few with the interval
    every = commits["every batch, overlapped"]
    assert every >= 20
    assert commits["interval, inline"] <= every / 4
    assert commits["interval, two calls in flight"] <= every / 4
    # inference overlapped with the next poll, inline, or two calls at once: the same scores
    first, *others = scores.values()
    assert first and all(other == first for other in others)


def test_revoked_partitions_are_committed_up_to_what_is_durable(
    broker, tmp_path, records, energy_model
):
    """When another member joins, the worker commits what its windows no longer need before it
    gives the partitions up (the consumer calls it on its network thread, where a blocking
    commit fails)."""
    cfg = _cfg(
        broker, tmp_path, commit_interval_ms=3_600_000, poll_timeout_ms=30_000, max_poll_records=4
    )  # after the first batch, only the revocation commits: no interval, no idle commit
    ensure_topics(broker, [cfg.topic], 4)
    publish(make_producer(broker), cfg.topic, plan_streams([records]), speed=0, t_start=T0,
            progress=False)  # fmt: skip
    worker = Worker(cfg, Scorer(energy_model))
    thread = _start(worker)
    other = None
    try:
        assert wait_until(lambda: worker.summary.messages == 80, 40, step=0.05)
        time.sleep(0.5)
        targets = worker._commit_targets()
        before = _committed(broker, cfg)
        assert any((before[p] or 0) < t for p, t in targets.items())  # something to commit
        other = KafkaConsumer(
            cfg.topic, bootstrap_servers=broker, group_id=cfg.group, enable_auto_commit=False
        )
        assert wait_until(lambda: other.poll(100) is not None and other.assignment(), 40)
        after = _committed(broker, cfg)
    finally:
        if other is not None:
            other.close(autocommit=False)
        worker.stop()
        thread.join(30)
    assert {p: after[p] for p in targets} == targets


def test_a_rebalance_with_a_batch_in_flight_commits_it_and_the_worker_goes_on(
    broker, tmp_path, records, energy_model
):
    """A member joins while a batch waits for its inference and carries a commit: the
    revocation completes the batch and commits it without the batch's own blocking commit, which
    raises on the consumer's network thread and used to stop the worker."""
    cfg = _cfg(broker, tmp_path, commit_interval_ms=0, max_poll_records=8)
    ensure_topics(broker, [cfg.topic], 4)
    publish(make_producer(broker), cfg.topic, plan_streams([records]), speed=0, t_start=T0,
            progress=False)  # fmt: skip
    worker = Worker(cfg, Scorer(energy_model))
    worker._open()
    other, joined = None, threading.Event()

    def poll_batch() -> dict:
        deadline = time.time() + 40
        while time.time() < deadline:
            polled = worker._poll(200)
            if worker._to_rewind:
                polled = worker._rewind(polled)
            if polled:
                return polled
        raise AssertionError("nothing polled")

    try:
        worker._inflight.append(worker._stage(poll_batch()))
        worker._finish_inflight()  # the first batch: nothing durable before it to commit
        worker._inflight.append(worker._stage(poll_batch()))
        staged = worker._inflight[0]
        assert worker._commit_offsets(staged.commit_to)  # a commit waits on this batch
        other = KafkaConsumer(
            cfg.topic, bootstrap_servers=broker, group_id=cfg.group, enable_auto_commit=False
        )

        def join():
            if wait_until(lambda: other.poll(100) is not None and other.assignment(), 40):
                joined.set()

        joiner = threading.Thread(target=join, daemon=True)
        joiner.start()
        while not joined.is_set() and joiner.is_alive():
            worker._poll(100)  # the rebalance callbacks run inside this poll
        joiner.join(5)
        assert joined.is_set()
        assert not worker._inflight  # completed by the revocation
        committed = _committed(broker, cfg)
        assert all((committed[p] or 0) >= t for p, t in staged.commit_to.items())
        assert worker.metrics.commits.labels("failed")._value.get() == 0
    finally:
        if other is not None:
            other.close(autocommit=False)
        worker.close()


def test_inference_depth_below_one_is_refused(broker, tmp_path, energy_model):
    with pytest.raises(ConfigError, match="inference_depth"):
        Worker(_cfg(broker, tmp_path, inference_depth=0), Scorer(energy_model))


def test_a_backlog_is_scored_with_the_catchup_depth(broker, tmp_path, records, energy_model):
    """Records published longer than ``catchup_after_s`` ago are a backlog: the worker counts
    those batches (and keeps ``catchup_inference_depth`` calls in flight for them); fresh
    records are not; both give the same scores."""
    scores, catchup = {}, {}
    for name, after_s in {"backlog": 0.5, "fresh": 600.0}.items():
        cfg = _cfg(
            broker, tmp_path, catchup_after_s=after_s, catchup_inference_depth=3,
            max_poll_records=4, outbox=str(tmp_path / f"outbox-{name}.sqlite"),
            scores_out=str(tmp_path / f"scores-{name}.jsonl"),
        )  # fmt: skip
        ensure_topics(broker, [cfg.topic], 4)
        publish(make_producer(broker), cfg.topic, plan_streams([records]), speed=0, t_start=T0,
                progress=False)  # fmt: skip
        time.sleep(1.0)  # every record is now older than 0.5 s
        worker = Worker(cfg, Scorer(energy_model))
        thread = _start(worker)
        try:
            assert wait_until(lambda w=worker: w.summary.messages == 80, 40, step=0.05)
            assert worker._infer_pool._max_workers == 3  # threads for the catch-up depth
        finally:
            worker.stop()
            thread.join(30)
        catchup[name] = worker.metrics.catchup_batches._value.get()
        scores[name] = sorted(
            (r["stream"], r["window"], r["score"]) for r in read_scores(Path(cfg.scores_out))
        )
    assert catchup["backlog"] >= 20  # 80 chunks in polls of at most 4
    assert catchup["fresh"] == 0
    assert scores["backlog"] and scores["backlog"] == scores["fresh"]


def test_catchup_settings_are_checked(broker, tmp_path, energy_model):
    with pytest.raises(ConfigError, match="catchup_inference_depth"):
        Worker(_cfg(broker, tmp_path, catchup_inference_depth=0), Scorer(energy_model))
    with pytest.raises(ConfigError, match="catchup_after_s"):
        Worker(_cfg(broker, tmp_path, catchup_after_s=0), Scorer(energy_model))
