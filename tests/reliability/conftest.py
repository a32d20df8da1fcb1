"""Reliability tests reuse the streaming tests' real broker (Tansu) and tiny real ONNX model."""

from streaming.conftest import broker, energy_model  # noqa: F401  (re-exported fixtures)
