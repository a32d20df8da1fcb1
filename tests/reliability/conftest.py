"""Reliability tests reuse the streaming tests' real broker (Tansu) and tiny real ONNX model,
and add a local S3-compatible server on which restarted brokers keep their log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from streaming.conftest import broker, energy_model  # noqa: F401  (re-exported fixtures)

from .broker import S3Store, s3_available


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory) -> Iterator[S3Store]:
    """A moto S3 server for persistent Tansu brokers (one bucket per broker)."""
    if not s3_available():
        pytest.skip("no local S3 server (pip install 'moto[server]')")
    with S3Store(tmp_path_factory.mktemp("s3")) as store:
        yield store
