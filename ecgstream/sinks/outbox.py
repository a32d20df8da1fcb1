"""A durable SQLite outbox: alerts are written here before offsets are committed.

:meth:`Outbox.put` stores alerts and one delivery row per webhook endpoint in one transaction
(WAL journal, ``synchronous=FULL``), so once it returns the alerts survive a crash or restart.
A dispatcher (:class:`~ecgstream.sinks.webhook.WebhookDispatcher`) takes due deliveries,
sends them and records the outcome. An alert id already in the outbox is not stored or sent
again, which makes redelivered chunks idempotent within one outbox.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Outbox", "Delivery"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    alert_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    delivered REAL,
    PRIMARY KEY (alert_id, endpoint)
);
CREATE INDEX IF NOT EXISTS due ON deliveries (state, next_attempt);
CREATE TABLE IF NOT EXISTS endpoints (
    url TEXT PRIMARY KEY,
    disabled INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT ''
);
"""


@dataclass
class Delivery:
    """One pending delivery of an alert to an endpoint."""

    alert_id: str
    endpoint: str
    body: str
    attempts: int
    created: float


class Outbox:
    """SQLite-backed alert store and delivery queue (thread-safe; one connection, one lock)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def put(self, alerts: list[dict], endpoints: list[str], now: float | None = None) -> int:
        """Store ``alerts`` durably with a delivery per endpoint; returns how many were new."""
        if not alerts:
            return 0
        now = time.time() if now is None else now
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                new = 0
                for alert in alerts:
                    cur.execute(
                        "INSERT OR IGNORE INTO alerts (id, body, created) VALUES (?, ?, ?)",
                        (alert["id"], json.dumps(alert, separators=(",", ":")), now),
                    )
                    if cur.rowcount:
                        new += 1
                        cur.executemany(
                            "INSERT OR IGNORE INTO deliveries (alert_id, endpoint, next_attempt) VALUES (?, ?, ?)",
                            [(alert["id"], url, now) for url in endpoints],
                        )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return new

    def due(self, now: float | None = None, limit: int = 100) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, oldest first, to enabled endpoints."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT d.alert_id, d.endpoint, a.body, d.attempts, a.created FROM deliveries d "
                "JOIN alerts a ON a.id = d.alert_id "
                "LEFT JOIN endpoints e ON e.url = d.endpoint "
                "WHERE d.state = 'pending' AND d.next_attempt <= ? AND COALESCE(e.disabled, 0) = 0 "
                "ORDER BY d.next_attempt, a.created LIMIT ?",
                (now, limit),
            ).fetchall()
        return [Delivery(*row) for row in rows]

    def next_due(self) -> float | None:
        """Time of the earliest pending attempt (s since the epoch), None if nothing is pending."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(d.next_attempt) FROM deliveries d LEFT JOIN endpoints e ON e.url = d.endpoint "
                "WHERE d.state = 'pending' AND COALESCE(e.disabled, 0) = 0"
            ).fetchone()
        return row[0]

    def mark_delivered(self, alert_id: str, endpoint: str, now: float | None = None) -> None:
        self._set(
            alert_id, endpoint, "delivered", time.time() if now is None else now, "", delivered=True
        )

    def mark_retry(self, alert_id: str, endpoint: str, next_attempt: float, error: str) -> None:
        self._set(alert_id, endpoint, "pending", next_attempt, error)

    def mark_failed(self, alert_id: str, endpoint: str, error: str) -> None:
        self._set(alert_id, endpoint, "failed", time.time(), error)

    def _set(
        self,
        alert_id: str,
        endpoint: str,
        state: str,
        when: float,
        error: str,
        delivered: bool = False,
    ) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt = ?, "
                "last_error = ?, delivered = CASE WHEN ? THEN ? ELSE delivered END "
                "WHERE alert_id = ? AND endpoint = ?",
                (state, when, error[:500], delivered, when, alert_id, endpoint),
            )

    def disable_endpoint(self, url: str, reason: str) -> None:
        """Stop delivering to ``url`` (the receiver answered 410 Gone)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO endpoints (url, disabled, reason) VALUES (?, 1, ?) "
                "ON CONFLICT(url) DO UPDATE SET disabled = 1, reason = excluded.reason",
                (url, reason),
            )

    def disabled_endpoints(self) -> dict[str, str]:
        with self._lock:
            return dict(
                self._db.execute("SELECT url, reason FROM endpoints WHERE disabled = 1").fetchall()
            )

    def pending(self) -> int:
        """Deliveries not yet delivered nor given up (to enabled and disabled endpoints)."""
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'"
            ).fetchone()[0]

    def counts(self) -> dict[str, int]:
        """Deliveries by state, plus the number of stored alerts."""
        with self._lock:
            out = dict(
                self._db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()
            )
            out["alerts"] = self._db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
        return out

    def alerts(self) -> list[dict]:
        """Every stored alert, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT body FROM alerts ORDER BY created, id").fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
