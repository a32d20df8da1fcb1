"""``GET /healthz`` on the worker's metrics port: 200 while it consumes with a broker
connection, 503 (JSON saying why) before it consumes, while the broker is down, and once it
stops. A real Tansu broker is killed and restarted on the same port."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
from streaming.conftest import free_port
from streaming.helpers import wait_until

from ecgstream.config import RunConfig
from ecgstream.runtime.scorer import Scorer
from ecgstream.streaming.worker import Worker

from .broker import TansuBroker, tansu_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.broker_restart,
    pytest.mark.skipif(not tansu_available(), reason="no tansu binary"),
]


def _health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def test_healthz_follows_consumption_and_the_broker_connection(tmp_path, energy_model):
    broker = TansuBroker(tmp_path).start()
    topic = f"h-{uuid.uuid4().hex[:8]}"
    port = free_port()
    cfg = RunConfig(bootstrap=broker.bootstrap, topic=topic, group=f"g-{topic}",
                    dlq_topic=f"{topic}.dlq", partitions=1, outbox="", alerts_out="",
                    poll_timeout_ms=100, metrics_port=port)  # fmt: skip
    worker = Worker(cfg, Scorer(energy_model))
    assert worker.health()[0] is False  # not consuming yet
    thread = threading.Thread(target=worker.run, kwargs={"max_s": 120}, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: _health(port)[0] == 200, 30)
        status, body = _health(port)
        assert body["status"] == "ok" and body["consuming"] and body["broker_up"]
        t = time.perf_counter()
        broker.stop()
        assert wait_until(lambda: _health(port)[0] == 503, 20, step=0.1)
        down_s = time.perf_counter() - t
        status, body = _health(port)
        assert body == {**body, "status": "unavailable", "consuming": True, "broker_up": False}
        t = time.perf_counter()
        broker.start()
        assert wait_until(lambda: _health(port)[0] == 200, 30, step=0.1)
        print(f"healthz: 503 {down_s:.1f} s after the broker was killed, 200 again "
              f"{time.perf_counter() - t:.1f} s after it restarted")  # fmt: skip
        worker.stop()
        thread.join(30)
        assert not thread.is_alive()
        assert worker.health()[0] is False
        assert _health(port)[0] == 0  # the listener closed with the worker
    finally:
        worker.stop()
        broker.stop()
