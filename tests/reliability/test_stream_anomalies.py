"""Sequence and time anomalies of one stream (issue 24): a t0 far ahead, seq 2^63-1, a device
reboot restarting seq at 0, a clock going back. Each is a documented stream event (counted in
``ecgstream_stream_events{kind}`` and logged) after which the stream is scored again, through
the worker's pipeline with a real ONNX model; duplicates do not keep a stream from eviction.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest

from ecgstream.alerts.state import AlertConfig
from ecgstream.runtime.scorer import Scorer
from ecgstream.streaming.pipeline import Incoming, Pipeline
from ecgstream.streaming.wire import Chunk

T0 = 1_700_000_000.0
FS = 250.0


def _chunk(rng, seq: int, t0: float) -> Chunk:
    x = (rng.standard_normal((int(FS), 1)) * 0.3).astype(np.float32)
    return Chunk("s", seq, t0, FS, ["MLII"], x)


def _feed(pipe: Pipeline, plan: list[tuple[int, float]]) -> tuple[list[int], Counter]:
    """Feed (seq, t0) chunks one per batch; returns windows scored per chunk and the events."""
    rng = np.random.default_rng(0)
    windows, events = [], Counter()
    for i, (seq, t0) in enumerate(plan):
        res = pipe.process([Incoming(_chunk(rng, seq, t0), 0, i)], now=T0 + i)
        assert not res.rejected, res.rejected
        windows.append(res.windows)
        events.update(res.events)
    return windows, events


@pytest.fixture()
def pipe(energy_model) -> Pipeline:
    return Pipeline(Scorer(energy_model), AlertConfig(min_windows=1), keep_scores=True)


CASES = {
    # one chunk 1e7 s ahead, then the stream's own time again
    "t0_far_ahead": (
        [(i, T0 + i) for i in range(6)] + [(6, T0 + 1e7)] + [(i, T0 + i) for i in range(7, 16)],
        {"time_jump": 1, "time_back": 1},
    ),
    # one chunk numbered 2^63-1 (the largest seq), then the stream's own numbers again
    "seq_max": (
        [(i, T0 + i) for i in range(6)]
        + [(2**63 - 1, T0 + 6)]
        + [(i, T0 + i) for i in range(7, 16)],
        {"gap": 1, "seq_restart": 1},
    ),
    # the device reboots after 6 s and counts from 0 again; time goes on
    "reboot": (
        [(i, T0 + i) for i in range(6)] + [(i, T0 + 6 + i) for i in range(10)],
        {"seq_restart": 1},
    ),
    # the device clock goes back an hour (NTP); seq goes on
    "clock_back": (
        [(i, T0 + i) for i in range(6)] + [(i, T0 - 3600 + i) for i in range(6, 16)],
        {"time_back": 1},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_sequence_or_time_anomaly_restarts_the_stream_and_scoring_resumes(pipe, case, caplog):
    plan, expected = CASES[case]
    with caplog.at_level(logging.WARNING, logger="ecgstream.streaming.buffers"):
        windows, events = _feed(pipe, plan)
    assert {k: v for k, v in events.items() if k != "duplicate"} == expected
    assert not events["duplicate"]
    # 2 s windows every 1 s: after the last restart (at most 10 chunks of 1 s ago) every
    # complete window is scored again: 9 of the last 9 chunks' windows at least 8
    assert sum(windows[-9:]) >= 8, windows
    assert sum(windows[:6]) == 5  # and before it, as usual
    logged = [r.getMessage() for r in caplog.records]
    for kind in expected.keys() - {"gap"}:
        assert any(f"stream s: {kind}" in m and "starts over" in m for m in logged), logged


def test_duplicates_are_dropped_and_do_not_keep_a_stream_alive(pipe):
    rng = np.random.default_rng(1)
    for i in range(5):
        pipe.process([Incoming(_chunk(rng, i, T0 + i), 0, i)], now=T0 + i)
    res = pipe.process([Incoming(_chunk(rng, 2, T0 + 2), 0, 9)], now=T0 + 100)  # a retry
    assert res.events == {"duplicate": 1} and res.windows == 0
    assert pipe.streams["s"].buffer.last_seen == T0 + 4
    assert pipe.evict_idle(T0 + 100, 60.0) == 1 and "s" not in pipe.streams
