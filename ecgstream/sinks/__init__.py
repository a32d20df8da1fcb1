"""Where alerts go: webhooks through a durable SQLite outbox, an alerts topic, JSON lines.

Every sink's ``write(alerts)`` returns only once the alerts are durable (committed to SQLite,
acknowledged by the broker, flushed to the file); the worker commits offsets after that.
"""

from ecgstream.sinks.jsonl import JsonLinesSink
from ecgstream.sinks.kafka_topic import AlertsTopicSink
from ecgstream.sinks.outbox import Delivery, Outbox
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

__all__ = [
    "JsonLinesSink",
    "AlertsTopicSink",
    "Outbox",
    "Delivery",
    "WebhookConfig",
    "WebhookDispatcher",
    "backoff_delay",
    "new_secret",
    "parse_retry_after",
    "secret_key",
    "sign",
    "verify",
]
