"""Streaming: the Kafka wire format, per-stream buffers, the worker and replay.

- :mod:`~ecgstream.streaming.wire`: chunk encoding (JSON and binary frame) and validation;
- :mod:`~ecgstream.streaming.buffers`: per-stream sequence checks, causal preprocessing, windows;
- :mod:`~ecgstream.streaming.pipeline`: the broker-free core (windows of all streams in one
  ONNX Runtime call, alert state machines);
- :mod:`~ecgstream.streaming.worker`: the consumer-group worker of ``ecgstream run``;
- :mod:`~ecgstream.streaming.local`: the same pipeline in one process (``run --replay``);
- :mod:`~ecgstream.streaming.replay`: records as live streams (``ecgstream replay``);
- :mod:`~ecgstream.streaming.kafka`, :mod:`~ecgstream.streaming.metrics`: client wrappers and
  Prometheus metrics.

Submodules are imported on demand (kafka-python is only needed by the worker and replay).
"""

__all__ = ["wire", "buffers", "pipeline", "worker", "local", "replay", "kafka", "metrics"]
