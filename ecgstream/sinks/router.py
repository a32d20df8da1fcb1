"""All configured alert sinks behind one ``write``: outbox (webhooks), alerts topic, JSON lines."""

from __future__ import annotations

import logging

from ecgstream.sinks.jsonl import JsonLinesSink
from ecgstream.sinks.kafka_topic import AlertsTopicSink
from ecgstream.sinks.outbox import Outbox
from ecgstream.sinks.webhook import WebhookConfig, WebhookDispatcher

__all__ = ["AlertRouter"]

log = logging.getLogger(__name__)


class AlertRouter:
    """Writes each batch of alerts to every sink; returns once all of them hold it durably.

    ``webhook_urls`` get a delivery row each in the outbox; the dispatcher thread sends them.
    """

    def __init__(
        self,
        outbox: Outbox | None = None,
        webhook_urls: list[str] | None = None,
        webhook_secret: str = "",
        jsonl: JsonLinesSink | None = None,
        topic: AlertsTopicSink | None = None,
        webhook_cfg: WebhookConfig | None = None,
        on_webhook_result=None,
    ):
        self.urls = list(webhook_urls or [])
        if self.urls and outbox is None:
            raise ValueError("webhooks need an outbox (a SQLite file) to deliver from")
        self.outbox, self.jsonl, self.topic = outbox, jsonl, topic
        self.dispatcher = None
        if self.urls:
            if not webhook_secret:
                log.warning(
                    "webhooks to %s are NOT signed: no webhook secret configured", self.urls
                )
            secrets = {u: webhook_secret for u in self.urls} if webhook_secret else {}
            self.dispatcher = WebhookDispatcher(
                outbox, secrets, webhook_cfg, on_webhook_result
            ).start()

    def write(self, alerts: list[dict]) -> int:
        """Store ``alerts`` durably in every sink; returns how many were new to the outbox."""
        if not alerts:
            return 0
        new = len(alerts)
        if self.outbox is not None:
            new = self.outbox.put(alerts, self.urls)
            if self.dispatcher is not None and new:
                self.dispatcher.notify()
        if self.topic is not None:
            self.topic.write(alerts)
        if self.jsonl is not None:
            self.jsonl.write(alerts)
        return new

    def close(self, drain_s: float = 5.0) -> None:
        """Give pending webhooks ``drain_s`` seconds, then close every sink."""
        if self.dispatcher is not None:
            self.dispatcher.stop(drain_s)
        if self.jsonl is not None:
            self.jsonl.close()
        if self.outbox is not None:
            self.outbox.close()
