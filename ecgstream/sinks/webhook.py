"""Webhook delivery following the Standard Webhooks convention (https://www.standardwebhooks.com).

Each alert is POSTed as JSON with ``webhook-id`` (the alert id, so receivers de-duplicate),
``webhook-timestamp`` (integer seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``
over ``id.timestamp.body`` keyed by the base64 part of a ``whsec_...`` secret). Deliveries come
from the durable :class:`~ecgstream.sinks.outbox.Outbox`; failures are retried with exponential
backoff and jitter, a ``Retry-After`` header is honoured, and ``410 Gone`` disables the endpoint.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from ecgstream.sinks.outbox import Delivery, Outbox

__all__ = [
    "WebhookConfig",
    "WebhookDispatcher",
    "sign",
    "verify",
    "secret_key",
    "new_secret",
    "backoff_delay",
    "parse_retry_after",
]

log = logging.getLogger(__name__)
SECRET_PREFIX = "whsec_"
#: most 307/308 redirects one attempt follows (each re-POSTs the same body and signature)
MAX_REDIRECTS = 3
#: redirects that keep the method and body (RFC 9110); other 3xx would turn the POST into a GET
_REPOST = (307, 308)


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (a secret without the prefix is base64 too)."""
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError:
        raise ValueError(
            "webhook secret must be 'whsec_' followed by base64 (e.g. from new_secret())"
        ) from None
    if len(key) < 16:
        raise ValueError(
            f"webhook secret key is {len(key)} bytes; use at least 16 (24-64 recommended)"
        )
    return key


def new_secret(n_bytes: int = 24) -> str:
    """A fresh random ``whsec_`` secret."""
    import secrets

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(n_bytes)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(
    secret: str, headers: dict, body: bytes, tolerance_s: float = 300.0, now: float | None = None
) -> bool:
    """Check a received webhook (header names case-insensitive) as a receiver would."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, ts = h["webhook-id"], int(h["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance_s:
        return False
    expected = sign(secret, msg_id, ts, body).split(",", 1)[1]
    for part in h.get("webhook-signature", "").split():
        version, _, sig = part.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False


def backoff_delay(
    attempt: int, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Delay (s) before retry ``attempt`` (1 = first retry): exponential with "equal jitter".

    The delay is uniform in ``[d/2, d]`` with ``d = min(max_s, base_s * 2**(attempt-1))``.
    """
    d = min(max_s, base_s * 2 ** max(attempt - 1, 0))
    return d / 2 + (rng or random).uniform(0, d / 2)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class WebhookConfig:
    """Delivery policy: ``timeout_s`` per request, retries up to ``max_attempts`` in total."""

    timeout_s: float = 5.0
    max_attempts: int = 12
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    max_retry_after_s: float = 3600.0
    batch: int = 50


class WebhookDispatcher:
    """Background thread delivering the outbox's pending alerts to webhook endpoints.

    ``secrets`` maps endpoint URL to its ``whsec_`` secret. ``on_result(status)`` is called with
    ``delivered``, ``retry``, ``failed`` or ``disabled`` after each attempt (for metrics).
    """

    def __init__(
        self,
        outbox: Outbox,
        secrets: dict[str, str],
        cfg: WebhookConfig | None = None,
        on_result: Callable[[str], None] | None = None,
    ):
        for secret in secrets.values():
            secret_key(secret)  # fail early on a bad secret
        self.outbox, self.secrets = outbox, dict(secrets)
        self.cfg = cfg or WebhookConfig()
        self.on_result = on_result or (lambda status: None)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        # redirects are handled in :meth:`_post`, never by the client
        self._http = httpx.Client(timeout=self.cfg.timeout_s, follow_redirects=False)
        self._redirect_warned: set[str] = set()

    def start(self) -> WebhookDispatcher:
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
        self._thread.start()
        return self

    def notify(self) -> None:
        """New alerts are in the outbox: deliver now instead of at the next poll."""
        self._wake.set()

    def stop(self, drain_s: float = 5.0) -> None:
        """Deliver what is due for up to ``drain_s`` seconds, then stop the thread."""
        deadline = time.time() + drain_s
        while time.time() < deadline and self.outbox.due(limit=1):
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=self.cfg.timeout_s + 1)
        self._http.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.deliver_due()
            except Exception:  # never let delivery errors kill the thread
                log.exception("webhook delivery loop error")
                sent = 0
            if sent:
                continue
            nxt = self.outbox.next_due()
            wait = 1.0 if nxt is None else min(1.0, max(0.0, nxt - time.time()))
            self._wake.wait(wait)
            self._wake.clear()

    def deliver_due(self) -> int:
        """One pass over due deliveries; returns how many attempts were made."""
        due = self.outbox.due(limit=self.cfg.batch)
        disabled = set(self.outbox.disabled_endpoints())
        for d in due:
            if d.endpoint in disabled or self._stop.is_set():
                continue
            status = self.attempt(d)
            if status == "disabled":
                disabled.add(d.endpoint)
            self.on_result(status)
        return len(due)

    def attempt(self, d: Delivery) -> str:
        """Send one delivery and record the outcome in the outbox; returns the outcome."""
        body = d.body.encode()
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "ecgstream-webhooks/1",
            "webhook-id": d.alert_id,
            "webhook-timestamp": str(ts),
        }
        secret = self.secrets.get(d.endpoint)
        if secret:
            headers["webhook-signature"] = sign(secret, d.alert_id, ts, body)
        code, error, retry_after = self._post(d.endpoint, body, headers)
        if 200 <= code < 300:
            self.outbox.mark_delivered(d.alert_id, d.endpoint)
            return "delivered"
        if code == 410:
            self.outbox.disable_endpoint(d.endpoint, "410 Gone")
            self.outbox.mark_failed(d.alert_id, d.endpoint, "410 Gone: endpoint disabled")
            log.warning("webhook endpoint %s answered 410 Gone; disabled", d.endpoint)
            return "disabled"
        attempts = d.attempts + 1
        log.info(
            "webhook %s to %s: attempt %d of %d failed: %s",
            d.alert_id,
            d.endpoint,
            attempts,
            self.cfg.max_attempts,
            error,
        )
        if attempts >= self.cfg.max_attempts:
            self.outbox.mark_failed(d.alert_id, d.endpoint, error)
            log.warning(
                "webhook %s to %s failed after %d attempts: %s",
                d.alert_id,
                d.endpoint,
                attempts,
                error,
            )
            return "failed"
        delay = backoff_delay(attempts, self.cfg.backoff_base_s, self.cfg.backoff_max_s, self._rng)
        if retry_after is not None:
            delay = min(max(delay, retry_after), self.cfg.max_retry_after_s)
        self.outbox.mark_retry(d.alert_id, d.endpoint, time.time() + delay, error)
        log.debug("webhook %s to %s: next attempt in %.1f s", d.alert_id, d.endpoint, delay)
        return "retry"

    def _post(self, url: str, body: bytes, headers: dict) -> tuple[int, str, float | None]:
        """POST ``body`` to ``url``; returns the final status (0: no answer), an error text
        for a failure and the ``Retry-After`` seconds, if any.

        307 and 308 re-POST the same body and headers (so the same signature) to the new
        location, up to :data:`MAX_REDIRECTS` times and never from https to http; any other
        3xx is returned as the failure it is for a webhook (its POST would become a GET).
        """
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = self._http.post(url, content=body, headers=headers)
            except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
                return 0, f"connection: {type(exc).__name__}: {exc}", None
            code = resp.status_code
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if not 300 <= code < 400:
                return code, f"HTTP {code}", retry_after
            location = resp.headers.get("location")
            if not location:
                return code, f"HTTP {code} without a Location header", retry_after
            target = resp.url.join(location)
            if code not in _REPOST:
                if url not in self._redirect_warned:  # a configuration error: say so once
                    self._redirect_warned.add(url)
                    log.warning(
                        "webhook endpoint %s answers HTTP %d (redirect to %s): not followed, "
                        "deliveries fail until the URL is corrected (docs/delivery.md)",
                        url,
                        code,
                        target,
                    )
                return code, f"HTTP {code} redirect to {target} not followed", retry_after
            if resp.url.scheme == "https" and target.scheme != "https":
                return code, f"HTTP {code} redirect from https to {target} refused", retry_after
            log.info("webhook %s: HTTP %d, re-POSTing to %s", url, code, target)
            url = str(target)
        return code, f"more than {MAX_REDIRECTS} redirects, the last to {url}", retry_after
