"""Prometheus metrics of the worker, served over HTTP (``--metrics-port``), with its health.

Labels are bounded (outcome, kind, reason, severity); stream, patient and device ids are never
used as labels. Each :class:`Metrics` has its own registry, so several workers can live in one
process (tests) without clashing. The same listener answers ``GET /healthz`` (see
:meth:`Metrics.serve`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["Metrics"]


class Metrics:
    """All worker metrics, prefixed ``ecgstream_``."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._server: ThreadingHTTPServer | None = None
        self.messages = Counter(
            "ecgstream_messages", "Messages consumed, by outcome", ["outcome"], registry=r
        )
        self.dlq = Counter(
            "ecgstream_dlq_messages",
            "Messages sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.dlq_failed = Counter(
            "ecgstream_dlq_failed",
            "Rejected messages the dead-letter topic refused (too large, ...): logged with their "
            "offset and skipped, by reason",
            ["reason"],
            registry=r,
        )
        self.catchup_batches = Counter(
            "ecgstream_catchup_batches",
            "Batches whose oldest record was older than catchup_after_s (scored with "
            "catchup_inference_depth calls in flight)",
            registry=r,
        )
        self.stream_step = Counter(
            "ecgstream_stream_step",
            "Windows scored with the model's stream step (kind=window) and carries computed a "
            "hop ahead of a stream's first window (kind=primer)",
            ["kind"],
            registry=r,
        )
        self.windows = Counter(
            "ecgstream_windows", "Windows, by outcome (scored, suppressed)", ["outcome"], registry=r
        )
        self.alerts = Counter(
            "ecgstream_alerts",
            "Alerts emitted, by kind and severity",
            ["kind", "severity"],
            registry=r,
        )
        self.stream_events = Counter(
            "ecgstream_stream_events", "Gaps, duplicates and resets", ["kind"], registry=r
        )
        self.webhooks = Counter(
            "ecgstream_webhook_attempts", "Webhook attempts, by result", ["result"], registry=r
        )
        self.batch_windows = Histogram(
            "ecgstream_batch_windows",
            "Windows per inference call",
            registry=r,
            buckets=(1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096),
        )
        self.batch_messages = Histogram(
            "ecgstream_batch_messages",
            "Messages per poll",
            registry=r,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
        )
        self.inference_s = Histogram(
            "ecgstream_inference_seconds",
            "ONNX Runtime time per batch",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.batch_s = Histogram(
            "ecgstream_batch_seconds",
            "Time to process one poll (decode to durable alerts)",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.commits = Counter(
            "ecgstream_commits", "Offset commits, by outcome", ["outcome"], registry=r
        )
        self.lag = Gauge(
            "ecgstream_consumer_lag",
            "Messages behind the end of the assigned partitions",
            registry=r,
        )
        self.streams = Gauge("ecgstream_streams", "Streams with state in this worker", registry=r)
        self.partitions = Gauge(
            "ecgstream_assigned_partitions", "Partitions assigned to this worker", registry=r
        )
        self.broker_up = Gauge(
            "ecgstream_broker_up",
            "1 while the consumer has a broker connection, 0 in an outage",
            registry=r,
        )
        self.broker_outages = Counter(
            "ecgstream_broker_outages", "Broker outages (no connection for 2 s or more)", registry=r
        )
        self.outbox_pending = Gauge(
            "ecgstream_outbox_pending", "Webhook deliveries waiting in the outbox", registry=r
        )

    def serve(
        self,
        port: int,
        addr: str = "127.0.0.1",
        health: Callable[[], tuple[bool, dict]] | None = None,
    ) -> ThreadingHTTPServer:
        """Serve ``GET /metrics`` (and ``GET /healthz`` with ``health``) on ``addr:port`` in a
        background thread until :meth:`close`.

        ``health()`` returns (healthy, details): ``/healthz`` answers 200 or 503 with the
        details as a JSON object.
        """
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(registry)
                elif path == "/healthz" and health is not None:
                    try:
                        ok, details = health()
                    except Exception as exc:  # a failing check is an unhealthy worker
                        ok, details = False, {"status": "unavailable", "error": str(exc)}
                    status, ctype = (200 if ok else 503), "application/json"
                    body = json.dumps(details).encode()
                else:
                    status, ctype, body = 404, "text/plain", b"not found\n"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes every few seconds are not news
                pass

        server = ThreadingHTTPServer((addr, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        self._server = server
        return server

    def close(self) -> None:
        """Stop the listener started by :meth:`serve` (if any)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
