"""Flags shared by the Kafka commands (``ecgstream run``, ``ecgstream replay``) and how they reach the config.

Both commands connect to a broker and a raw chunk topic; TLS/SASL settings are not flags but come
from the ``[run]`` / ``[replay]`` table and ``ECGSTREAM_<SECTION>__*`` variables, so secrets stay
out of ``ps``. Flags override the config field of the same name (see :func:`ecgstream.config.load`).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

__all__ = ["add_kafka_flags", "config_flags"]


def add_kafka_flags(p: argparse.ArgumentParser, topic_help: str) -> None:
    """Add ``--bootstrap`` and ``--topic`` (``topic_help`` says what the command does with it)."""
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default localhost:9092)")
    p.add_argument("--topic", help=topic_help)


def config_flags(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The parsed flags that set fields of the config dataclass ``config_cls`` (``None``: not given)."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config_cls)
        if hasattr(args, f.name)
    }
