"""Prometheus metrics are served over HTTP and never labelled with stream, patient or device ids."""

from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import synthetic_ecg
from reliability.scenarios import scrape
from sinks.receiver import Receiver

from ecgstream.config import RunConfig
from ecgstream.runtime.scorer import Scorer
from ecgstream.sinks.webhook import new_secret
from ecgstream.streaming.kafka import ensure_topics, make_producer
from ecgstream.streaming.metrics import Metrics
from ecgstream.streaming.wire import Chunk, encode_binary
from ecgstream.streaming.worker import Worker

from .conftest import free_port
from .helpers import burst, wait_until

T0 = 1_700_000_000.0


def test_metrics_are_served_with_bounded_labels():
    m = Metrics()
    m.messages.labels("ok").inc(5)
    m.dlq.labels("bad_fs").inc()
    m.alerts.labels("anomaly", "critical").inc()
    port = free_port()
    m.serve(port, addr="127.0.0.1")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'ecgstream_messages_total{outcome="ok"} 5.0' in text
    assert 'ecgstream_dlq_messages_total{reason="bad_fs"} 1.0' in text
    labels = set()
    for metric in m.registry.collect():
        for sample in metric.samples:
            labels |= set(sample.labels)
    assert labels <= {"outcome", "reason", "kind", "severity", "result", "le"}


DOCS = Path(__file__).resolve().parents[2] / "docs"


def _documented() -> set[str]:
    """Metric names in the metrics table of docs/operations.md (``_total`` dropped)."""
    names = set()
    for line in (DOCS / "operations.md").read_text().splitlines():
        m = re.match(r"\| `(ecgstream_[a-z_]+)` \|", line)
        if m:
            names.add(m[1].removesuffix("_total"))
    return names


def test_every_metric_is_documented_and_every_documented_metric_exists():
    registered = {fam.name for fam in Metrics().registry.collect()}
    assert _documented() == registered
    named = set(re.findall(r"ecgstream_[a-z_]+", (DOCS / "delivery.md").read_text()))
    assert {n.removesuffix("_total") for n in named} <= registered


def _pending_is_alerts(m: dict) -> bool:
    alerts = sum(v for k, v in m.items() if k.startswith("ecgstream_alerts_total{"))
    return m.get("ecgstream_outbox_pending") == alerts


@pytest.mark.integration
def test_a_running_worker_sets_its_metrics(broker, tmp_path, energy_model):
    """Scraped over HTTP from a worker consuming a real broker, with a webhook receiver that
    answers 503: the outbox holds the alerts (ecgstream_outbox_pending was never set before
    issue 24), the dead letter, duplicate, windows, alerts and commits are all counted."""
    topic = f"met-{uuid.uuid4().hex[:8]}"
    secret = new_secret()
    rx = Receiver(secret, script=[(503, {})] * 1000)
    port = free_port()
    cfg = RunConfig(bootstrap=broker, topic=topic, group=f"g-{topic}", dlq_topic=f"{topic}.dlq",
                    partitions=1, outbox=str(tmp_path / "o.sqlite"), alerts_out="",
                    poll_timeout_ms=100, min_windows=1, webhook_urls=[rx.url],
                    webhook_secret=secret, metrics_port=port)  # fmt: skip
    ensure_topics(broker, [topic, cfg.dlq_topic], 1)
    producer = make_producer(broker)
    sig = burst(synthetic_ecg(12, 250, seed=4, n_leads=1), 250, 6.0, 2.0)
    for i in range(12):
        c = Chunk("bed", i, T0 + i, 250.0, ["MLII"], sig[i * 250 : (i + 1) * 250])
        producer.send(topic, key=b"bed", value=encode_binary(c))
        if i == 3:
            producer.send(topic, key=b"bed", value=encode_binary(c))  # a duplicate
            producer.send(topic, key=b"bed", value=b"\x00garbage")
    producer.flush()
    worker = Worker(cfg, Scorer(energy_model))
    thread = threading.Thread(target=worker.run, kwargs={"max_s": 60}, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: scrape(port).get("ecgstream_outbox_pending", 0) > 0, 40)
        assert wait_until(lambda: rx.wait_for(1, 0.1), 20)
        # every alert is pending (the gauge follows within a second of the last batch)
        assert wait_until(lambda: _pending_is_alerts(scrape(port)), 10)
        m = scrape(port)
    finally:
        worker.stop()
        thread.join(30)
        rx.close()
    assert m["ecgstream_outbox_pending"] >= 1
    assert m["ecgstream_messages_total{outcome=ok}"] == 13
    assert m["ecgstream_messages_total{outcome=dead_letter}"] == 1
    assert m["ecgstream_dlq_messages_total{reason=unknown_encoding}"] == 1
    assert m["ecgstream_stream_events_total{kind=duplicate}"] == 1
    assert m["ecgstream_windows_total{outcome=scored}"] == 11
    assert m["ecgstream_webhook_attempts_total{result=retry}"] >= 1
    assert m["ecgstream_commits_total{outcome=ok}"] >= 1
    assert m["ecgstream_batch_messages_count"] >= 1 and m["ecgstream_batch_seconds_count"] >= 1
    assert m["ecgstream_inference_seconds_count"] >= 1 and m["ecgstream_batch_windows_count"] >= 1
    assert m["ecgstream_streams"] == 1 and m["ecgstream_assigned_partitions"] == 1
    assert m["ecgstream_broker_up"] == 1 and m["ecgstream_consumer_lag"] == 0
    # set elsewhere, each by its own test: ecgstream_broker_outages (reliability/
    # test_broker_outage), ecgstream_catchup_batches and ecgstream_stream_step (test_worker),
    # ecgstream_dlq_failed (test_worker, a 20 MiB message)
    assert m["ecgstream_broker_outages_total"] == 0 and "ecgstream_catchup_batches_total" in m


def test_the_metrics_listener_binds_loopback_unless_configured():
    from ecgstream.config import load

    assert RunConfig().metrics_addr == "127.0.0.1"
    cfg = load(RunConfig, "run", environ={"ECGSTREAM_RUN__METRICS_ADDR": "0.0.0.0"})
    assert cfg.metrics_addr == "0.0.0.0"
    m = Metrics()
    server = m.serve(free_port())
    try:
        assert server.server_address[0] == "127.0.0.1"
        port = server.server_address[1]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert err.value.code == 404  # no health check given
    finally:
        m.close()
