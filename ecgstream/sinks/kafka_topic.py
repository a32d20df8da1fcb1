"""Alerts topic sink: alerts published to Kafka, keyed by stream id, acknowledged before commit."""

from __future__ import annotations

import json

__all__ = ["AlertsTopicSink"]


class AlertsTopicSink:
    """Publishes alerts to ``topic`` with ``producer`` (a ``kafka.KafkaProducer``, acks=all).

    ``write`` returns once the broker acknowledged every alert, so offsets committed afterwards
    never get ahead of the alerts topic.
    """

    def __init__(self, producer, topic: str, timeout_s: float = 30.0):
        self.producer, self.topic, self.timeout_s = producer, topic, timeout_s

    def write(self, records: list[dict]) -> None:
        futures = [
            self.producer.send(
                self.topic,
                key=r["stream"].encode(),
                value=json.dumps(r, separators=(",", ":")).encode(),
            )
            for r in records
        ]
        self.producer.flush(timeout=self.timeout_s)
        for f in futures:
            f.get(timeout=self.timeout_s)  # raises if the broker did not take it

    def close(self) -> None:
        pass
