"""The embedded default: the worker's pipeline on replayed records in one process, no broker.

``ecgstream run --replay [PATH]`` feeds the chunks that ``ecgstream replay`` would publish
straight into the same :class:`~ecgstream.streaming.pipeline.Pipeline` the Kafka worker runs,
one time step (every stream's next chunk) per batch, and writes alerts to the same sinks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ecgstream.sinks.jsonl import JsonLinesSink
from ecgstream.sinks.router import AlertRouter
from ecgstream.streaming.pipeline import Incoming, Pipeline
from ecgstream.streaming.replay import Stream, interleave, start_time
from ecgstream.streaming.worker import Summary

__all__ = ["run_local", "pipeline_close"]


def pipeline_close(pipeline: Pipeline) -> list[dict]:
    """Resolve every stream's open anomaly and rhythm alerts (the streams ended); messages."""
    out = []
    for st in pipeline.streams.values():
        m = st.anomaly
        t_end = m.open.end_s if m.open is not None else 0.0
        out += m.close(t_end)
        if m.rhythm is not None:
            last = max((c.open.end_s for c in m.rhythm.conditions.values() if c.open), default=0.0)
            out += m.rhythm.close(last)
    return [a.to_dict() for a in out]


def run_local(
    pipeline: Pipeline,
    streams: list[Stream],
    router: AlertRouter,
    scores: JsonLinesSink | None = None,
    chunk_s: float = 1.0,
    speed: float = 0.0,
    t_start: float | None = None,
    progress: bool = False,
    on_alert: Callable[[dict], None] | None = None,
) -> Summary:
    """Replay ``streams`` through ``pipeline``; ``speed`` 0 = as fast as possible, 1 = real time.

    ``on_alert`` is called with each alert after it is durable (e.g. to print a readable line).
    """
    from tqdm import tqdm

    t_start = start_time() if t_start is None else t_start
    summary = Summary(threshold=pipeline.threshold, t_origin=t_start)
    n_steps = int(max((s.record.duration_s for s in streams), default=0.0) // chunk_s)
    wall0 = time.time()
    with tqdm(total=n_steps, desc="replaying", unit="s", disable=not progress, leave=False) as bar:
        for i, step in enumerate(interleave(streams, t_start, chunk_s)):
            if speed > 0:
                delay = wall0 + i * chunk_s / speed - time.time()
                if delay > 0:
                    time.sleep(delay)
            res = pipeline.process([Incoming(c) for c in step])
            for item, reason, detail in res.rejected:
                summary.dlq[reason] += 1
                raise ValueError(f"stream {item.chunk.stream}: {detail}")
            alerts = [a.to_dict() for a in res.alerts]
            router.write(alerts)
            if on_alert is not None:
                for alert in alerts:
                    on_alert(alert)
            if scores is not None:
                scores.write(res.scores)
            summary.add_peaks(res.scores)
            summary.add(res, len(step))
            summary.streams.update(c.stream for c in step)
            bar.update(1)
    ended = pipeline_close(pipeline)  # the replay is over: resolve the alerts still open
    if ended:
        router.write(ended)
        if on_alert is not None:
            for alert in ended:
                on_alert(alert)
    summary.seconds = time.time() - wall0
    return summary
