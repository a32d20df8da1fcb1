"""Webhook signing, backoff and delivery from the outbox to a real HTTP receiver."""

from __future__ import annotations

import random
import time

import pytest

from ecgstream.sinks.outbox import Outbox
from ecgstream.sinks.webhook import (
    WebhookConfig,
    WebhookDispatcher,
    backoff_delay,
    new_secret,
    parse_retry_after,
    secret_key,
    sign,
    verify,
)

from .receiver import Receiver


def test_signature_matches_the_standard_webhooks_reference_vector():
    # test vector of the Standard Webhooks reference libraries
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_rejects_tampering_and_old_timestamps():
    secret = new_secret()
    body = b'{"id": "a"}'
    ts = int(time.time())
    headers = {
        "webhook-id": "a",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, "a", ts, body),
    }
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body + b" ")
    assert not verify(new_secret(), headers, body)
    assert not verify(secret, {**headers, "webhook-id": "b"}, body)
    assert not verify(secret, headers, body, now=ts + 3600)


def test_bad_secrets_are_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match="base64"):
        secret_key("whsec_not base64!")
    with pytest.raises(ValueError, match="bytes"):
        secret_key("whsec_AAAA")


def test_backoff_grows_exponentially_with_bounded_jitter():
    rng = random.Random(0)
    for attempt in range(1, 12):
        d = min(300.0, 2.0 * 2 ** (attempt - 1))
        samples = [backoff_delay(attempt, 2.0, 300.0, rng) for _ in range(50)]
        assert all(d / 2 <= s <= d for s in samples)
        assert max(samples) - min(samples) > 0  # jittered
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:50 GMT", now=1445412480.0) == 50.0
    assert parse_retry_after("soon") is None


def _alert(i: int) -> dict:
    return {"id": f"alert_{i}", "stream": "s", "kind": "anomaly", "score": float(i)}


def test_retries_honour_retry_after_then_deliver(tmp_path):
    secret = new_secret()
    rx = Receiver(secret, script=[(503, {}), (429, {"Retry-After": "1"})])
    outbox = Outbox(tmp_path / "outbox.sqlite")
    cfg = WebhookConfig(backoff_base_s=0.05, backoff_max_s=0.2)
    disp = WebhookDispatcher(outbox, {rx.url: secret}, cfg).start()
    try:
        outbox.put([_alert(1)], [rx.url])
        disp.notify()
        assert rx.wait_for(3, timeout_s=10)
        times = [t for t, *_ in rx.received]
        assert times[2] - times[1] >= 0.95  # Retry-After: 1 was honoured (backoff alone < 0.2 s)
        assert all(ok for *_, ok in rx.received)  # every attempt correctly signed
        assert set(rx.alerts) == {"alert_1"}
        deadline = time.time() + 5
        while outbox.counts().get("delivered") != 1 and time.time() < deadline:
            time.sleep(0.05)
        assert outbox.counts()["delivered"] == 1
    finally:
        disp.stop(0)
        rx.close()


def test_410_disables_the_endpoint(tmp_path):
    secret = new_secret()
    rx = Receiver(secret, script=[(410, {})])
    outbox = Outbox(tmp_path / "outbox.sqlite")
    disp = WebhookDispatcher(outbox, {rx.url: secret})
    outbox.put([_alert(1), _alert(2)], [rx.url])
    disp.deliver_due()
    assert len(rx.received) == 1  # the second alert is not sent to a disabled endpoint
    assert rx.url in outbox.disabled_endpoints()
    assert outbox.due() == []
    rx.close()


def test_outbox_survives_a_restart_and_a_receiver_outage(tmp_path):
    secret = new_secret()
    path = tmp_path / "outbox.sqlite"
    dead_url = "http://127.0.0.1:9/alerts"  # nothing listens: connection refused
    outbox = Outbox(path)
    assert outbox.put([_alert(i) for i in range(5)], [dead_url]) == 5
    assert outbox.put([_alert(0)], [dead_url]) == 0  # same id: idempotent
    disp = WebhookDispatcher(
        outbox, {dead_url: secret}, WebhookConfig(backoff_base_s=0.01, backoff_max_s=0.01)
    )
    disp.deliver_due()
    assert outbox.counts()["pending"] == 5
    outbox.close()  # "crash"
    rx = Receiver(secret)
    outbox = Outbox(path)
    # the receiver is back at a new address: re-point the pending deliveries there
    outbox._db.execute("UPDATE deliveries SET endpoint = ?, next_attempt = 0", (rx.url,))
    disp = WebhookDispatcher(outbox, {rx.url: secret})
    disp.deliver_due()
    assert set(rx.alerts) == {f"alert_{i}" for i in range(5)}
    assert outbox.counts()["delivered"] == 5
    rx.close()


# ---------------------------------------------------------------- redirects (issue 24)


def _one(tmp_path, rx: Receiver, secret: str, **cfg) -> tuple[Outbox, WebhookDispatcher, str]:
    box = Outbox(tmp_path / "o.sqlite")
    box.put([_alert(0)], [rx.url])
    wh = WebhookDispatcher(box, {rx.url: secret}, WebhookConfig(timeout_s=2.0, **cfg))
    return box, wh, wh.attempt(box.due()[0])


@pytest.mark.parametrize("code", [301, 302, 303])
def test_a_redirect_that_would_turn_the_post_into_a_get_is_a_failed_attempt(tmp_path, code):
    """urllib re-issued a 302'd POST as a body-less GET and marked the alert delivered."""
    secret = new_secret()
    rx = Receiver(secret, script=[(code, {"Location": "{url}/moved"})])
    try:
        box, wh, status = _one(tmp_path, rx, secret)
    finally:
        rx.close()
    assert status == "retry"
    assert rx.requests == [("POST", "/alerts")]  # no GET to the new location
    assert box.counts() == {"pending": 1, "alerts": 1}
    row = box._db.execute("SELECT last_error, attempts FROM deliveries").fetchone()
    assert row == (f"HTTP {code} redirect to {rx.base}/moved not followed", 1)


@pytest.mark.parametrize("code", [307, 308])
def test_307_and_308_re_post_the_same_body_and_signature(tmp_path, code):
    secret = new_secret()
    rx = Receiver(secret, script=[(code, {"Location": "/moved"})])
    try:
        box, wh, status = _one(tmp_path, rx, secret)
    finally:
        rx.close()
    assert status == "delivered" and box.counts() == {"delivered": 1, "alerts": 1}
    assert rx.requests == [("POST", "/alerts"), ("POST", "/moved")]
    (_, h1, b1, ok1), (_, h2, b2, ok2) = rx.received
    assert ok1 and ok2 and b1 == b2 == _alert(0)
    assert h1["webhook-signature"] == h2["webhook-signature"]


def test_redirects_are_bounded(tmp_path):
    secret = new_secret()
    rx = Receiver(secret, script=[(307, {"Location": "{url}/alerts"})] * 10)
    try:
        box, wh, status = _one(tmp_path, rx, secret)
    finally:
        rx.close()
    assert status == "retry" and len(rx.requests) == 4  # the POST and 3 redirects
    row = box._db.execute("SELECT last_error FROM deliveries").fetchone()
    assert row[0].startswith("more than 3 redirects")


@pytest.mark.parametrize("code", [301, 308])
def test_an_http_to_https_redirect_never_marks_an_alert_delivered(tmp_path, code):
    """A 301 to https is not followed; a 308 is re-POSTed there, and fails here as nothing
    answers TLS on that port (a real endpoint would receive the same signed POST)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    secret = new_secret()
    rx = Receiver(secret, script=[(code, {"Location": f"https://127.0.0.1:{closed}/alerts"})])
    try:
        box, wh, status = _one(tmp_path, rx, secret)
    finally:
        rx.close()
    assert status == "retry" and box.counts() == {"pending": 1, "alerts": 1}
    assert rx.requests == [("POST", "/alerts")]
    error = box._db.execute("SELECT last_error FROM deliveries").fetchone()[0]
    assert ("not followed" in error) if code == 301 else error.startswith("connection:")


def test_failed_attempts_are_logged_at_info_and_the_next_delay_at_debug(tmp_path, caplog):
    """``ecgstream -v`` shows each failed attempt and why, ``-vv`` when the next one comes."""
    import logging

    secret = new_secret()
    rx = Receiver(secret, script=[(503, {})])
    try:
        with caplog.at_level(logging.DEBUG, logger="ecgstream.sinks.webhook"):
            box, wh, status = _one(tmp_path, rx, secret)
    finally:
        rx.close()
    assert status == "retry"
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert info == [f"webhook alert_0 to {rx.url}: attempt 1 of 12 failed: HTTP 503"]
    assert any(m.startswith(f"webhook alert_0 to {rx.url}: next attempt in ") for m in debug), debug
