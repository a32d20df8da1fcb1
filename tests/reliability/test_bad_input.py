"""Bad input: at least 10,000 malformed or hostile messages never crash the worker.

Most messages go through the decoder directly (fast): random bytes, mutated valid frames,
hostile header values, and hypothesis-generated JSON. Valid-but-hostile chunk sequences
(sequence jumps, out-of-order and duplicate chunks, absurd rates, wrong lead sets) go through
the worker's pipeline with a real ONNX model. Finally a real broker run interleaves a few
thousand bad messages with good ones: every bad one lands in the dead-letter topic with its
reason, and every window of the good streams is scored.
"""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
import uuid
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecgstream.alerts.state import AlertConfig
from ecgstream.config import RunConfig
from ecgstream.runtime.scorer import Scorer
from ecgstream.streaming.kafka import ensure_topics, make_producer
from ecgstream.streaming.pipeline import Incoming, Pipeline
from ecgstream.streaming.wire import MAX_MESSAGE_BYTES, Chunk, WireError, decode, encode_binary
from ecgstream.streaming.worker import Worker

from .fuzz import check_decode, good_chunk, hostile_headers, mutated_frames, random_frames

T0 = 1_700_000_000.0


def _run(gen) -> Counter:
    tally: Counter = Counter()
    for kind, value in gen:
        out = check_decode(value)
        tally[(kind, out if isinstance(out, str) else "ok")] += 1
    return tally


def test_ten_thousand_malformed_frames_raise_only_wire_errors():
    rng = np.random.default_rng(5)
    tally = (
        _run(random_frames(rng, 5000))
        + _run(mutated_frames(rng, 5000))
        + _run(hostile_headers(rng, 2000))
    )
    total = sum(tally.values())
    rejected = sum(v for (_, r), v in tally.items() if r != "ok")
    reasons = Counter(r for (_, r) in tally.elements())
    print(f"{total} messages, {rejected} rejected; reasons: {dict(reasons.most_common())}")
    assert total >= 12_000
    # nearly all are rejected; the rest are valid chunks that passed every invariant
    assert rejected >= 0.9 * total
    for kind in ("huge_header", "deep_json", "deep_header"):
        assert all(r != "ok" for (k, r) in tally if k == kind)


_scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from([10**400, -(10**400), 2**63, 2**64, 1e308, -0.0, "NaN", float("nan")])
)
_json_value = st.recursive(
    _scalar,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_rows = st.lists(st.lists(_scalar, min_size=0, max_size=3), max_size=10)
_VALID = {"stream": "m1", "seq": 3, "t0": T0, "fs": 250.0, "leads": ["MLII"], "units": "mV"}


def _corrupt(field: str, value, drop: bool) -> dict:
    obj = dict(_VALID)
    if drop and field in obj:
        del obj[field]
    else:
        obj[field] = value
    return obj


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from([*_VALID, "samples", "extra"]),
    value=st.one_of(_json_value, _rows),
    drop=st.booleans(),
    rows=_rows,
)
def test_hypothesis_json_messages(field, value, drop, rows):
    """One field of an otherwise valid JSON chunk is hostile (or missing)."""
    obj = _corrupt(field, value, drop)
    obj.setdefault("samples", rows)
    check_decode(json.dumps(obj, allow_nan=True).encode())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from([*_VALID, "n", "gain", "baseline", "extra"]),
    value=_json_value,
    drop=st.booleans(),
    body=st.binary(max_size=200),
    head=st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
def test_hypothesis_binary_headers(field, value, drop, body, head):
    """One header field of a binary frame is hostile; sample type, version and body are random."""
    from .fuzz import _header_frame

    hdr = _corrupt(field, value, drop)
    hdr.setdefault("n", 5)
    check_decode(_header_frame(hdr, body, type_code=head[0], version=head[1]))


def test_huge_message_is_rejected_before_it_is_parsed():
    value = b"{" + b" " * MAX_MESSAGE_BYTES  # one byte over the limit
    tracemalloc.start()
    try:
        with pytest.raises(WireError) as info:
            decode(value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == "too_large"
    assert peak < 64 * 1024, f"decoder allocated {peak} bytes to reject an oversized message"
    # a frame whose header claims the largest possible body but carries none
    hdr = {
        "stream": "m1",
        "seq": 0,
        "t0": T0,
        "fs": 250.0,
        "leads": [f"L{i}" for i in range(16)],
        "n": 65536,
    }
    from .fuzz import _header_frame

    tracemalloc.start()
    try:
        assert check_decode(_header_frame(hdr, b"")) == "bad_length"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


def _hostile_sequences(rng: np.random.Generator) -> list[Chunk]:
    """Valid chunks in hostile order and with hostile (but decodable) values."""

    def c(stream, seq, t0, fs=250.0, n=250, leads=("MLII",), fill=None):
        x = (rng.standard_normal((n, len(leads))) * 0.3).astype(np.float32)
        if fill is not None:
            x[:] = fill
        return Chunk(stream, seq, t0, fs, list(leads), x)

    out = []
    for i in range(12):  # a clean stream
        out.append(c("clean", i, T0 + i))
    out += [
        c("jump", 0, T0),
        c("jump", 1, T0 + 1),
        c("jump", 10**6, T0 + 2),
        c("jump", 2**62, T0 + 3),
    ]
    out += [
        c("bigseq", 2**62, T0),
        c("bigseq", 2**62 + 1, T0 + 1),
        c("bigseq", 2**63 - 1, 1e11 - 1),
    ]
    out += [c("short", i, T0 + i * 0.004, n=1) for i in range(30)]  # one-sample chunks
    out += [c("order", s, T0 + s) for s in (0, 1, 5, 3, 4, 2, 6, 6, 6, 7)]
    out += [
        c("back", 0, T0 + 100),
        c("back", 1, T0 + 50),
        c("back", 2, T0 - 1e6),
        c("back", 3, 1e11 - 1),
    ]
    out += [
        c("rate", i, T0 + i, fs=fs, n=max(1, int(fs)))
        for i, fs in enumerate((250, 1000, 20000, 360, 1e-300, 0.01, 1.0, 7.3))
    ]
    out += [
        c("slow", 0, T0, fs=0.01, n=65536, leads=("MLII", "V1")),
        c("slow", 1, T0 + 6.5e6, fs=1e-3, n=65536),
    ]
    out += [
        c("leads", 0, T0, leads=("V1",)),
        c("leads", 1, T0 + 1, leads=[f"L{i}" for i in range(15)] + ["MLII"]),
    ]
    out += [c("leads", 2, T0 + 2, leads=("V1", "V2")), c("leads", 3, T0 + 3)]
    out += [c("nan", i, T0 + i, fill=np.nan) for i in range(4)] + [c("nan", 4, T0 + 4)]
    out += [c("big", i, T0 + i, fill=1e6 if i % 2 else -1e6) for i in range(4)]
    return out


def test_hostile_chunk_sequences_never_crash_the_pipeline(energy_model):
    rng = np.random.default_rng(11)
    pipe = Pipeline(Scorer(energy_model), AlertConfig(min_windows=1))
    chunks = _hostile_sequences(rng)
    rejected: Counter = Counter()
    events: Counter = Counter()
    windows = 0
    for ch in chunks:  # one chunk per batch, so a failure names its chunk
        tracemalloc.start()
        t = time.perf_counter()
        try:
            res = pipe.process([Incoming(ch, 0, 0)])
        except Exception as exc:  # noqa: BLE001
            pytest.fail(
                f"pipeline raised {type(exc).__name__}: {exc} on {ch.stream} seq {ch.seq} fs {ch.fs} n {ch.n}"
            )
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert time.perf_counter() - t < 5.0, f"{ch.stream} seq {ch.seq} fs {ch.fs} took too long"
        assert peak < 200e6, f"{ch.stream} seq {ch.seq} fs {ch.fs}: {peak / 1e6:.0f} MB allocated"
        rejected.update(r for _, r, _ in res.rejected)
        events.update(res.events)
        windows += res.windows
    print(f"rejected {dict(rejected)}; events {dict(events)}; windows {windows}")
    # rates too low to carry the model's band (or absurd) are rejected with their reason
    assert rejected["unsupported_rate"] + rejected["bad_fs"] >= 5, rejected
    assert events["gap"] >= 2 and events["duplicate"] >= 3
    # the clean stream (12 s at 250 Hz, 2 s windows every 1 s) was scored throughout
    assert windows >= 10


@pytest.mark.integration
def test_bad_messages_interleaved_with_good_ones_on_a_real_broker(broker, tmp_path, energy_model):
    rng = np.random.default_rng(23)
    topic = f"fuzz-{uuid.uuid4().hex[:8]}"
    cfg = RunConfig(
        bootstrap=broker,
        topic=topic,
        group=f"g-{topic}",
        dlq_topic=f"{topic}.dlq",
        partitions=2,
        outbox=str(tmp_path / "outbox.sqlite"),
        alerts_out="",
        scores_out=str(tmp_path / "scores.jsonl"),
        poll_timeout_ms=100,
        max_poll_records=500,
    )
    ensure_topics(broker, [topic, cfg.dlq_topic], 2)
    bad = [v for _, v in random_frames(rng, 800)] + [v for _, v in mutated_frames(rng, 1200)]
    bad += [v for _, v in hostile_headers(rng, 400)]
    bad = [
        v for v in bad if v and isinstance(check_decode(v), str)
    ]  # keep those the decoder rejects
    bad += [v for _, v in hostile_headers(rng, 0)]
    expected = Counter(check_decode(v) for v in bad)
    n_streams, seconds = 4, 20
    producer = make_producer(broker)
    worker = Worker(cfg, Scorer(energy_model))
    thread = threading.Thread(target=worker.run, kwargs={"max_s": 120}, daemon=True)
    thread.start()
    per_step = -(-len(bad) // seconds)
    for s in range(seconds):
        for j in range(n_streams):
            ch = good_chunk(rng, stream=f"good{j}", seq=s)
            ch.t0 = T0 + s
            producer.send(topic, key=ch.stream.encode(), value=encode_binary(ch))
        for v in bad[s * per_step : (s + 1) * per_step]:
            producer.send(topic, key=f"good{int(rng.integers(0, n_streams))}".encode(), value=v)
    producer.flush()
    from kafka import KafkaConsumer

    c = KafkaConsumer(
        cfg.dlq_topic, bootstrap_servers=broker, auto_offset_reset="earliest", group_id=None
    )
    dead = []
    deadline = time.time() + 90
    while len(dead) < len(bad) and time.time() < deadline and thread.is_alive():
        for batch in c.poll(500).values():
            dead.extend(batch)
    c.close()
    time.sleep(1.0)
    alive = thread.is_alive()
    worker.stop()
    thread.join(30)
    assert alive, "the worker stopped on bad input"
    got = Counter(dict(r.headers)["ecgstream-dlq-reason"].decode() for r in dead)
    print(f"{len(bad)} bad messages among {n_streams * seconds} good ones; DLQ reasons {dict(got)}")
    assert len(dead) == len(bad)
    assert got == expected
    assert all(r.value in set(bad) or r.value == b"" for r in dead)
    lines = open(cfg.scores_out).read().splitlines()  # noqa: SIM115
    scored = {(s["stream"], s["window"]) for s in map(json.loads, lines)}
    for j in range(n_streams):  # 20 s of 2 s windows every 1 s: 19 windows per stream
        assert len({w for s, w in scored if s == f"good{j}"}) == seconds - 1
    assert sum(worker.summary.dlq.values()) == len(bad)


@pytest.mark.parametrize("type_code, gain", [(1, 1e-40), (2, 1e-45), (1, 1e-30), (2, 1e-30)])
def test_a_frame_with_a_tiny_gain_neither_blinds_its_stream_nor_alerts(
    energy_model, type_code, gain
):
    """Issue 24: one frame with gain 1e-40 (int16) or 1e-45 (float32) decoded to inf and every
    later window of its stream scored NaN; gain 1e-30 raised a false alert (score 1e16). Now the
    frame is dead-lettered with its reason and the stream goes on scoring finite values."""
    rng = np.random.default_rng(5)
    pipe = Pipeline(Scorer(energy_model), AlertConfig(min_windows=1), keep_scores=True)
    scores, alerts, rejected = [], [], []
    for i in range(12):
        c = good_chunk(rng, stream="tiny", seq=i)
        c.t0 = T0 + i
        if i == 4:
            hdr = {"stream": "tiny", "seq": i, "t0": T0 + i, "fs": 250.0, "leads": ["MLII"],
                   "n": 250, "gain": [gain], "baseline": [0.0]}  # fmt: skip
            dtype = "<i2" if type_code == 1 else "<f4"
            body = (c.samples * 200).astype(dtype).tobytes()
            head = json.dumps(hdr).encode()
            value = bytes([0xEC, 1, type_code, 0]) + len(head).to_bytes(4, "little") + head + body
        else:
            value = encode_binary(c, "int16" if i % 2 else "float32")
        try:
            chunk = decode(value)
        except WireError as exc:
            rejected.append(exc.reason)
            continue
        res = pipe.process([Incoming(chunk, 0, i)], now=T0 + i)
        scores += [s["score"] for s in res.scores]
        alerts += [a for a in res.alerts if a.kind == "anomaly"]
    assert rejected and rejected[0] in ("bad_gain", "out_of_range")
    assert len(scores) >= 9 and np.isfinite(scores).all()
    assert not alerts and max(scores) < 100
