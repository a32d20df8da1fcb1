"""Prometheus metrics are served over HTTP and never labelled with stream, patient or device ids."""

from __future__ import annotations

import urllib.request

from ecgstream.streaming.metrics import Metrics

from .conftest import free_port


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
