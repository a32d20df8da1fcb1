"""Thin wrappers around kafka-python: consumer, producer, topic creation, dead-letter messages.

The consumer never auto-commits (the worker commits after alerts are durable). kafka-python
computes CRC32C in pure Python unless the ``crc32c`` package is installed; it is a dependency,
and :func:`check_crc32c` warns if it is missing.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterable

__all__ = [
    "make_consumer",
    "make_producer",
    "ensure_topics",
    "dlq_headers",
    "check_crc32c",
    "wait_for_broker",
    "check_reachable",
    "BrokerUnavailable",
    "MAX_PARTITION_FETCH_BYTES",
    "MAX_REQUEST_BYTES",
]

log = logging.getLogger(__name__)
#: longest wait between reconnection attempts to a broker that went away, ms
RECONNECT_BACKOFF_MAX_MS = 4000
#: most bytes the consumer fetches per partition and request (a larger record still comes, alone)
MAX_PARTITION_FETCH_BYTES = 16 * 1024 * 1024
#: largest record the producer sends: any record the consumer fetches within
#: :data:`MAX_PARTITION_FETCH_BYTES`, plus room for the dead-letter headers
MAX_REQUEST_BYTES = MAX_PARTITION_FETCH_BYTES + 64 * 1024


def check_crc32c() -> bool:
    """True if the fast ``crc32c`` extension is importable (else kafka-python is ~30x slower)."""
    try:
        import crc32c  # noqa: F401
    except ImportError:
        log.warning("the crc32c package is missing: kafka-python falls back to pure-Python CRC32C")
        return False
    return True


def make_consumer(
    bootstrap: str,
    group: str,
    client_id: str = "ecgstream",
    max_poll_records: int = 2000,
    session_timeout_ms: int = 6000,
    heartbeat_interval_ms: int = 1000,
    auto_offset_reset: str = "earliest",
    **extra,
):
    """A ``KafkaConsumer`` in ``group`` with manual commits (subscribe it yourself)."""
    from kafka import KafkaConsumer

    check_crc32c()
    # reconnect within seconds of a broker coming back (kafka-python backs off up to 30 s)
    extra.setdefault("reconnect_backoff_max_ms", RECONNECT_BACKOFF_MAX_MS)
    return KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        group_id=group,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        max_poll_records=max_poll_records,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms,
        max_poll_interval_ms=max(300000, session_timeout_ms * 10),
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        **extra,
    )


def make_producer(bootstrap: str, client_id: str = "ecgstream", linger_ms: int = 5, **extra):
    """A ``KafkaProducer`` with ``acks=all`` (a sent message is durable once acknowledged).

    Its records may be as large as any the consumer fetches (:data:`MAX_REQUEST_BYTES`), so a
    message the worker read can always be copied to the dead-letter topic as far as the client
    is concerned (the broker or topic may still refuse it, see ``Worker._dead_letter``).
    """
    from kafka import KafkaProducer

    # Not idempotent: an idempotent producer cannot recover when the broker loses its producer
    # state (a replaced broker, or an in-memory test broker after a restart) and retries until
    # the delivery timeout. Alerts and dead letters carry their own ids, so a retried duplicate
    # is harmless (docs/reliability.md, broker outage).
    extra.setdefault("enable_idempotence", False)
    extra.setdefault("reconnect_backoff_max_ms", RECONNECT_BACKOFF_MAX_MS)
    return KafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        client_id=client_id,
        acks="all",
        linger_ms=linger_ms,
        batch_size=256 * 1024,
        max_request_size=MAX_REQUEST_BYTES,
        **extra,
    )


def ensure_topics(
    bootstrap: str, topics: Iterable[str], partitions: int = 1, replication: int = 1, **security
) -> None:
    """Create the ``topics`` that do not exist yet (existing topics are left as they are).

    ``security``: kafka-python TLS/SASL options (``ecgstream.streaming.security.kafka_options``).
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","), client_id="ecgstream-admin", **security
    )
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(t, partitions, replication) for t in topics if t and t not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently
                admin.create_topics(new)
    finally:
        admin.close()


class BrokerUnavailable(ConnectionError):
    """No bootstrap server of the cluster accepts a connection."""


def _servers(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port`` pairs of a comma-separated bootstrap list (ValueError if malformed)."""
    out = []
    for server in (s.strip() for s in bootstrap.split(",")):
        host, _, port = server.rpartition(":")
        if not server or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bootstrap server {server!r} is not HOST:PORT (in {bootstrap!r})")
        out.append((host.strip("[]") or "localhost", int(port)))
    return out


def check_reachable(
    bootstrap: str, timeout_s: float = 5.0, stop: threading.Event | None = None
) -> None:
    """Return once a bootstrap server accepts a TCP connection; try for ``timeout_s`` seconds
    (every 0.5 s), then raise :class:`BrokerUnavailable` with one line saying why.

    A plain socket, so an unreachable broker costs no kafka-python retries and error logs;
    returns early when ``stop`` is set.
    """
    servers = _servers(bootstrap)
    deadline = time.monotonic() + timeout_s
    why = ""
    while True:
        for host, port in servers:
            left = max(0.1, min(2.0, deadline - time.monotonic()))
            try:
                socket.create_connection((host, port), timeout=left).close()
                return
            except OSError as exc:
                why = f"{host}:{port}: {exc.strerror or exc}"
        if time.monotonic() >= deadline:
            raise BrokerUnavailable(
                f"no Kafka broker answers at {bootstrap} ({why}; tried for {timeout_s:g} s): "
                "check --bootstrap and that the broker runs"
            )
        if stop is not None and stop.wait(0.5):
            return
        if stop is None:
            time.sleep(0.5)


def wait_for_broker(bootstrap: str, timeout_s: float = 30.0, **security) -> None:
    """Block until the broker answers metadata requests, or raise :class:`BrokerUnavailable`."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.time() + timeout_s
    check_reachable(bootstrap, timeout_s)
    while True:
        try:
            KafkaAdminClient(
                bootstrap_servers=bootstrap.split(","), request_timeout_ms=2000, **security
            ).close()
            return
        except (KafkaError, OSError) as exc:
            if time.time() > deadline:
                raise BrokerUnavailable(f"no Kafka broker answers at {bootstrap}: {exc}") from exc
            time.sleep(0.5)


def dlq_headers(
    reason: str, detail: str, topic: str, partition: int, offset: int, timestamp: int | None
) -> list:
    """Kafka headers of a dead-letter message: why it was rejected and where it came from."""
    h = [
        ("ecgstream-dlq-reason", reason.encode()),
        ("ecgstream-dlq-detail", detail[:1000].encode()),
        ("ecgstream-original-topic", topic.encode()),
        ("ecgstream-original-partition", str(partition).encode()),
        ("ecgstream-original-offset", str(offset).encode()),
    ]
    if timestamp is not None:
        h.append(("ecgstream-original-timestamp", str(timestamp).encode()))
    return h
