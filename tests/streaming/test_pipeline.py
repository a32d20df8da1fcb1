"""The broker-free pipeline: one inference call per batch, technical alerts, rejections."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHIPPED_MODEL, synthetic_ecg

from ecgstream.alerts.state import AlertConfig
from ecgstream.runtime.scorer import Scorer
from ecgstream.runtime.stepping import HistoryStepper, WholeWindows
from ecgstream.streaming.pipeline import Incoming, Pipeline
from ecgstream.streaming.wire import Chunk, decode, encode_binary

from .helpers import build_energy_model, burst

T0 = 1_700_000_000.0


class CountingScorer(Scorer):
    calls = 0

    def score_windows(self, windows):
        type(self).calls += 1
        return super().score_windows(windows)


def _chunks(stream, sig, fs=360.0, leads=("MLII", "V1"), t0=T0):
    n = int(fs)
    return [
        Chunk(stream, i, t0 + i, fs, list(leads), sig[i * n : (i + 1) * n])
        for i in range(len(sig) // n)
    ]


def test_windows_of_all_streams_go_into_one_inference_call(energy_model):
    scorer = CountingScorer(energy_model)
    pipe = Pipeline(scorer, AlertConfig(min_windows=1))
    streams = {
        f"bed-{i}": _chunks(f"bed-{i}", synthetic_ecg(10, 360, seed=i, n_leads=2), t0=T0 + 0.3 * i)
        for i in range(6)
    }
    total = 0
    for step in range(10):
        CountingScorer.calls = 0
        res = pipe.process([Incoming(c[step]) for c in streams.values()])
        total += res.windows
        assert CountingScorer.calls == (1 if res.windows else 0)
        if step >= 2:
            assert res.windows == 6  # one window per stream and second, all in that one call
    assert total == 6 * 9


def test_technical_conditions_are_their_own_alerts_and_suppress_windows(energy_model):
    pipe = Pipeline(Scorer(energy_model), AlertConfig(min_windows=1))
    sig = burst(synthetic_ecg(20, 360, seed=1, n_leads=2), 360, 12.0, 2.0)  # a real anomaly later
    chunks = _chunks("bed", sig)
    chunks[3].samples[:, 0] = np.nan  # MLII off for a second
    chunks[6].samples[:, 0] = 0.25  # flat line
    del chunks[9]  # a lost chunk: a gap
    alerts, suppressed = [], 0
    for c in chunks:
        res = pipe.process([Incoming(decode(encode_binary(c)))])  # through the wire (int16)
        alerts += res.alerts
        suppressed += res.suppressed
    kinds = [a.kind for a in alerts]
    assert (
        kinds.count("lead_off") == 1 and kinds.count("flat_line") == 1 and kinds.count("gap") == 1
    )
    assert "anomaly" in kinds
    anomalies = [a for a in alerts if a.kind == "anomaly"]
    assert all(
        a.start_s >= T0 + 10 for a in anomalies
    )  # only the burst, never the lead-off or flat span
    lead_off = next(a for a in alerts if a.kind == "lead_off")
    assert lead_off.leads == ["MLII"] and lead_off.to_dict()["type"] == "signal.technical"
    assert suppressed >= 4


def test_saturation_from_int16_adc_limits(energy_model):
    pipe = Pipeline(Scorer(energy_model))
    c = _chunks("bed", synthetic_ecg(3, 360, seed=2, n_leads=2))[0]
    c.samples[:60, 0] = 1000.0  # beyond the int16 range at 200 ADC units per mV
    res = pipe.process([Incoming(decode(encode_binary(c)))])
    assert [a.kind for a in res.alerts] == ["saturation"]


def test_streams_without_the_models_leads_are_rejected_with_a_reason(tmp_path):
    model = build_energy_model(tmp_path / "two.onnx", leads=["I", "II"])
    pipe = Pipeline(Scorer(model))
    c = _chunks("bed", synthetic_ecg(2, 360, n_leads=2))[0]  # leads MLII, V1
    res = pipe.process([Incoming(c)])
    assert [(r[1]) for r in res.rejected] == ["lead_mismatch"]
    assert "needs" in res.rejected[0][2] and "bed" not in pipe.streams


@pytest.mark.parametrize("fs", [250.0, 500.0])
def test_other_rates_are_resampled_to_the_model_rate(energy_model, fs):
    pipe = Pipeline(Scorer(energy_model), keep_scores=True)
    sig = synthetic_ecg(6, int(fs), seed=3, n_leads=1)
    scores = []
    for c in _chunks("bed", sig, fs=fs, leads=("II",)):
        scores += pipe.process([Incoming(c)]).scores
    assert [s["window"] - int(T0 * 100) for s in scores] == [0, 100, 200, 300, 400]


def test_preparing_the_next_batch_before_completing_one_changes_nothing(energy_model):
    """The worker prepares poll k+1 while poll k is scored: same scores and alerts as in turn."""
    sigs = [burst(synthetic_ecg(20, 360, seed=s, n_leads=2), 360, 9.0, 2.0) for s in range(3)]
    batches = [
        [Incoming(c[i]) for c in (_chunks(f"bed-{s}", sig) for s, sig in enumerate(sigs))]
        for i in range(20)
    ]

    def run(overlapped: bool) -> tuple[list, list]:
        pipe = Pipeline(Scorer(energy_model), AlertConfig(min_windows=1), keep_scores=True)
        scores, alerts = [], []
        if not overlapped:
            for items in batches:
                res = pipe.process(items, now=T0)
                scores += res.scores
                alerts += [a.to_dict() for a in res.alerts]
            return scores, alerts
        pending = None
        for items in [*batches, None]:
            nxt = pipe.prepare(items, now=T0) if items is not None else None
            if pending is not None:
                res = pipe.complete(pending, pipe.infer(pending))
                scores += res.scores
                alerts += [a.to_dict() for a in res.alerts]
            pending = nxt
        return scores, alerts

    scores, alerts = run(False)
    assert len(scores) == 3 * 19 and any(a["kind"] == "anomaly" for a in alerts)
    assert run(True) == (scores, alerts)


def test_a_stream_that_reorders_its_leads_within_a_batch_keeps_each_chunks_columns(energy_model):
    """Each chunk feeds the model the lead it named MLII, also when the order of the leads
    changes between two chunks of one batch."""
    rng = np.random.default_rng(3)
    mlii = synthetic_ecg(8, 360)[: 360 * 8]
    other = rng.normal(0, 0.5, size=mlii.shape).astype(np.float32)  # noise, no technical alarm
    results = []
    for swap in (False, True):
        pipe = Pipeline(Scorer(energy_model), keep_scores=True)
        scores = []
        for i in range(0, 8, 2):
            items = []
            for k in (i, i + 1):
                part = slice(k * 360, (k + 1) * 360)
                if swap and k % 2:
                    x, leads = np.hstack([other[part], mlii[part]]), ["V1", "MLII"]
                else:
                    x, leads = np.hstack([mlii[part], other[part]]), ["MLII", "V1"]
                items.append(Incoming(Chunk("s", k, T0 + k, 360.0, leads, x)))
            scores += [s["score"] for s in pipe.process(items, now=T0 + i).scores]
        results.append(scores)
    assert len(results[0]) >= 4
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6)


def _window_scores(pipe, chunks_per_step):
    """Calibrated score per (stream, window start sample), how many windows were carried and
    how many primers were computed."""
    scores, carried, primed = {}, 0, 0
    for step in chunks_per_step:
        res = pipe.process([Incoming(c) for c in step])
        carried += res.carried
        primed += res.primed
        scores.update({(r["stream"], r["window"]): r["score"] for r in res.scores})
    return scores, carried, primed


def test_windows_take_over_the_sorts_of_their_previous_window():
    """The shipped model's stream step scores a window from the sorted segments its previous
    window shares with it: the scores equal the whole graph's, also after a gap, and every
    window uses it (a stream's first window, and the first after the gap, take over the sorts
    of a primer computed one hop earlier), with the same history term added."""
    full = Scorer(SHIPPED_MODEL)
    assert full.stepper is not None  # the shipped model carries a stream step
    stepped = Scorer(SHIPPED_MODEL)
    # the whole graph, with the model's history term as the stream step has it
    full.stepper = HistoryStepper(full, WholeWindows(full), full.history)
    streams = {
        f"bed-{i}": _chunks(f"bed-{i}", synthetic_ecg(60, 360, seed=i, n_leads=2), t0=T0 + i)
        for i in range(3)
    }
    del streams["bed-1"][30]  # a gap: the filters restart, no window spans it
    steps = [[c[i] for c in streams.values() if i < len(c)] for i in range(60)]
    want, none, no_primers = _window_scores(Pipeline(full, keep_scores=True), steps)
    got, carried, primed = _window_scores(Pipeline(stepped, keep_scores=True), steps)
    assert none == no_primers == 0 and got.keys() == want.keys() and len(got) >= 3 * 9
    diff = max(abs(got[k] - want[k]) for k in want)
    assert diff <= 1e-5, diff  # calibrated units; float32 arithmetic in another order
    # one primer per stream start and one after the gap; every window takes over its sorts
    assert primed == 3 + 1
    assert carried == len(got)


def _open_anomaly(energy_model, partition=None):
    """A pipeline with one stream whose burst at 12-16 s is still alerting at its last chunk."""
    pipe = Pipeline(Scorer(energy_model), AlertConfig(min_windows=1, rhythm=False))
    sig = burst(synthetic_ecg(16, 360, seed=3, n_leads=2), 360, 12.0, 4.0)
    alerts = []
    for c in _chunks("bed", sig):
        alerts += pipe.process([Incoming(c, partition=partition)]).alerts
    fired = [a for a in alerts if a.kind == "anomaly"]
    assert fired and fired[0].status == "firing" and fired[-1].status != "resolved"
    assert pipe.streams["bed"].anomaly.active
    return pipe, fired


def test_an_idle_stream_that_is_evicted_resolves_its_open_alert(energy_model):
    pipe, fired = _open_anomaly(energy_model)
    now = pipe.streams["bed"].buffer.last_seen
    assert pipe.evict_idle(now + 1.0, idle_s=60.0) == 0 and pipe.take_ended() == []
    assert pipe.evict_idle(now + 61.0, idle_s=60.0) == 1
    (resolved,) = pipe.take_ended()
    assert resolved.status == "resolved" and resolved.id == fired[0].id
    assert resolved.sequence == fired[-1].sequence + 1
    assert resolved.end_s == pytest.approx(fired[-1].end_s)  # the episode's end, not "now"
    assert resolved.at_s == pytest.approx(T0 + 16.0)  # the stream time of the last sample
    assert "no data for 60 s" in resolved.detail
    assert pipe.take_ended() == []  # taken once


def test_a_revoked_partition_resolves_the_open_alerts_of_its_streams(energy_model):
    pipe, fired = _open_anomaly(energy_model, partition=2)
    assert pipe.drop_partitions({1}) == 0 and pipe.take_ended() == []
    assert pipe.drop_partitions({2}) == 1
    (resolved,) = pipe.take_ended()
    assert resolved.status == "resolved" and resolved.id == fired[0].id
    assert "partition was revoked" in resolved.detail
    assert resolved.to_dict()["id"] == f"{fired[0].id}.{resolved.sequence}"


@pytest.mark.integration
def test_the_worker_resolves_the_open_alert_of_a_stream_that_went_idle(
    broker, tmp_path, energy_model
):
    """Through a real broker: a record that ends inside its burst leaves an alert open; once the
    stream is idle for ``stream_idle_s`` the worker writes the alert's ``resolved`` message."""
    import json
    import threading
    import uuid

    from conftest import write_record

    from ecgstream.config import RunConfig
    from ecgstream.streaming.kafka import ensure_topics, make_producer
    from ecgstream.streaming.replay import plan_streams, publish
    from ecgstream.streaming.worker import Worker

    from .helpers import wait_until

    folder = tmp_path / "records"
    folder.mkdir()
    write_record(folder, "ends", burst(synthetic_ecg(16, 360, seed=5, n_leads=2), 360, 12.0, 4.0),
                 360, ["MLII", "V1"])  # fmt: skip
    (folder / "RECORDS").write_text("ends\n")
    topic = f"ecg-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "alerts.jsonl"
    cfg = RunConfig(bootstrap=broker, topic=topic, group=f"g-{topic}", dlq_topic=f"{topic}.dlq",
                    partitions=1, outbox=str(tmp_path / "outbox.sqlite"), alerts_out=str(out),
                    poll_timeout_ms=100, min_windows=1, stream_idle_s=1.0)  # fmt: skip
    ensure_topics(broker, [topic], 1)
    publish(make_producer(broker), topic, plan_streams([folder]), speed=0, t_start=T0,
            progress=False)  # fmt: skip
    worker = Worker(cfg, Scorer(energy_model))
    thread = threading.Thread(target=worker.run, kwargs={"max_s": 60}, daemon=True)
    thread.start()

    def messages():
        if not out.exists():
            return []
        return [json.loads(x) for x in out.read_text().splitlines() if x.strip()]

    try:
        assert wait_until(lambda: any(m["status"] == "resolved" for m in messages()), 40)
    finally:
        worker.stop()
        thread.join(30)
    anomaly = [m for m in messages() if m["kind"] == "anomaly"]
    assert anomaly[0]["status"] == "firing" and anomaly[-1]["status"] == "resolved"
    assert {m["alert_id"] for m in anomaly} == {anomaly[0]["alert_id"]}
    assert "no data for 1 s" in anomaly[-1]["detail"]
    assert T0 + 12.0 < anomaly[-1]["end_s"] <= T0 + 16.0 + 1e-6
