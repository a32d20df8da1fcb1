"""Replaying WFDB records as live streams: to Kafka (``ecgstream replay``) or in-process.

Records are cut into chunks of ``chunk_s`` seconds (the last partial chunk is dropped), every
record (times ``copies``) is one stream, and the streams are interleaved chunk by chunk as live
monitors would send them. Every stream starts at the same whole second; the worker counts
windows from each stream's start, exactly as ``ecgstream score`` counts them in the record.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ecgstream.signals.records import Record, list_records, read_record
from ecgstream.streaming.wire import Chunk, encode_binary, encode_json

__all__ = [
    "Stream",
    "plan_streams",
    "record_chunks",
    "interleave",
    "encode",
    "publish",
    "bundled_records",
    "start_time",
]

log = logging.getLogger(__name__)


@dataclass
class Stream:
    """One stream to replay: its id and the record it plays."""

    stream: str
    record: Record


def bundled_records() -> list[Path]:
    """The real ECG excerpts bundled with the package (see ecgstream/data/README.md)."""
    folder = Path(__file__).resolve().parents[1] / "data" / "mitdb"
    return list_records(folder)


def plan_streams(paths: list[str | Path], copies: int = 1, limit_s: float = 0.0) -> list[Stream]:
    """Read the records behind ``paths`` (records or folders) and name one stream per copy."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    out = []
    for path in list_records(*paths):
        rec = read_record(path)
        if limit_s and limit_s > 0:
            rec.signal = rec.signal[: int(round(limit_s * rec.fs))]
        for j in range(copies):
            out.append(Stream(rec.name if copies == 1 else f"{rec.name}-{j:04d}", rec))
    return out


def record_chunks(
    stream: str, record: Record, t_start: float, chunk_s: float = 1.0, seq0: int = 0
) -> Iterator[Chunk]:
    """Chunks of ``chunk_s`` seconds of ``record`` as stream ``stream`` starting at ``t_start``.

    Sequence numbers start at ``seq0`` (a looping replay continues them).
    """
    n = int(round(chunk_s * record.fs))
    if n < 1:
        raise ValueError(f"chunk of {chunk_s} s is less than one sample at {record.fs} Hz")
    units = record.units[0] if record.units else "mV"
    for i in range(record.n_samples // n):
        yield Chunk(
            stream,
            seq0 + i,
            t_start + i * n / record.fs,
            record.fs,
            record.leads,
            record.signal[i * n : (i + 1) * n],
            units,
        )


def interleave(
    streams: list[Stream], t_start: float, chunk_s: float = 1.0, seq0: int = 0
) -> Iterator[list[Chunk]]:
    """Per time step, the chunk of every stream that still has samples (live-monitor order)."""
    iters = [record_chunks(s.stream, s.record, t_start, chunk_s, seq0) for s in streams]
    while iters:
        step, alive = [], []
        for it in iters:
            chunk = next(it, None)
            if chunk is not None:
                step.append(chunk)
                alive.append(it)
        iters = alive
        if step:
            yield step


def encode(chunk: Chunk, encoding: str = "binary", sample_type: str = "int16") -> bytes:
    """Encode a chunk for the wire (``binary`` frame or ``json``)."""
    if encoding == "json":
        return encode_json(chunk)
    if encoding != "binary":
        raise ValueError(f"encoding must be 'binary' or 'json', not {encoding!r}")
    return encode_binary(chunk, sample_type=sample_type)


def start_time(now: float | None = None) -> float:
    """Stream start: the current time rounded down to a whole second."""
    return float(math.floor(time.time() if now is None else now))


def publish(
    producer,
    topic: str,
    streams: list[Stream],
    chunk_s: float = 1.0,
    speed: float = 1.0,
    encoding: str = "binary",
    sample_type: str = "int16",
    t_start: float | None = None,
    progress: bool = True,
    seq0: int = 0,
) -> int:
    """Send every stream's chunks to ``topic`` keyed by stream id; returns time steps sent.

    ``speed`` 1 paces chunks in real time (one time step every ``chunk_s`` seconds), 2 twice as
    fast, 0 as fast as possible.
    """
    from tqdm import tqdm

    if speed < 0:
        raise ValueError(f"speed must be >= 0, got {speed}")
    t_start = start_time() if t_start is None else t_start
    longest = max((s.record.duration_s for s in streams), default=0.0)
    n_steps = int(longest // chunk_s)
    sent = 0
    failed: list[Exception] = []  # sends the broker never acknowledged (e.g. during an outage)
    wall0 = time.time()
    with tqdm(total=n_steps, desc="replay", unit="step", disable=not progress) as bar:
        for i, step in enumerate(interleave(streams, t_start, chunk_s, seq0)):
            if speed > 0:
                delay = wall0 + i * chunk_s / speed - time.time()
                if delay > 0:
                    time.sleep(delay)
            for chunk in step:
                producer.send(
                    topic, key=chunk.stream.encode(), value=encode(chunk, encoding, sample_type)
                ).add_errback(failed.append)
            sent += len(step)
            bar.update(1)
            bar.set_postfix(streams=len(step), messages=sent, refresh=False)
    producer.flush()
    if failed:
        log.warning(
            "%d of %d messages were not delivered to %s (first error: %s)",
            len(failed),
            sent,
            topic,
            failed[0],
        )
    return n_steps
