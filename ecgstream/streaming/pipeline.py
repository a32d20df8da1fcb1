"""The broker-free core of the worker: chunks in, windows batched into one ONNX call, alerts out.

:class:`Pipeline` is what ``ecgstream run`` executes for every poll, and what
``ecgstream run --replay`` executes in one process without a broker. For a batch of chunks it
checks each chunk's place in its stream (:class:`~ecgstream.streaming.buffers.StreamBuffer`:
sequence, time, lead mapping), gathers the model's leads and feeds them to the technical checks
(:func:`~ecgstream.alerts.technical.check_streams`) and to the streams' filters, run side by
side (:mod:`ecgstream.signals.bank`), cuts the complete windows of *all* streams, scores them in
one call of the model's stream stepper (:mod:`ecgstream.runtime.stepping`: its stream step, or
its main graph window by window) and feeds the calibrated scores to each stream's alert state
machine. The stepper's per-stream state rides along in :class:`StreamState`, unopened.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as TallyCounter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecgstream.alerts.rhythm import update_streams as rhythm_alerts
from ecgstream.alerts.state import Alert, AlertConfig, AnomalyMachine
from ecgstream.alerts.technical import TechnicalConfig, TechnicalMachine, check_streams
from ecgstream.runtime.scorer import Scorer
from ecgstream.runtime.stepping import Cut, Primer, Stepped, StreamStepper, WholeWindows
from ecgstream.streaming.buffers import (
    PendingInput,
    StreamBuffer,
    Unprocessable,
    Windows,
    preprocess_pending,
)
from ecgstream.streaming.wire import Chunk, adc_clipped, physical_leads

__all__ = [
    "Pipeline",
    "Incoming",
    "BatchResult",
    "StreamState",
    "Prepared",
    "Inference",
]

log = logging.getLogger(__name__)


@dataclass
class Incoming:
    """A decoded chunk and where it came from (``partition``/``offset`` None without a broker)."""

    chunk: Chunk
    partition: int | None = None
    offset: int | None = None


@dataclass
class BatchResult:
    """What one batch produced: alerts, per-window scores (if kept), rejected chunks, tallies."""

    alerts: list[Alert] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)
    rejected: list[tuple[Incoming, str, str]] = field(default_factory=list)
    windows: int = 0
    carried: int = 0  # windows that took over state from their stream's previous window
    primed: int = 0  # streams whose state was prepared ahead of their next window
    suppressed: int = 0
    events: TallyCounter = field(default_factory=TallyCounter)
    inference_s: float = 0.0


@dataclass
class Prepared:
    """A batch cut into windows, waiting for its inference call (``batch`` None: no window).

    ``plan`` is the stream stepper's (see :mod:`ecgstream.runtime.stepping`): what the windows
    take over from their streams' states, and the primers asked for.
    """

    res: BatchResult
    parts: list[tuple[StreamState, Windows]]
    batch: np.ndarray | None
    plan: Any = None


@dataclass
class Inference:
    """What the stream stepper gave for a prepared batch and the seconds the call took."""

    stepped: Stepped
    seconds: float


@dataclass
class StreamState:
    """Everything the worker keeps per stream; ``model`` is the stream stepper's state, which
    the pipeline keeps without looking inside."""

    buffer: StreamBuffer
    anomaly: AnomalyMachine
    technical: TechnicalMachine
    model: Any = None
    partition: int | None = None


def single_threaded_blas() -> None:
    """Run numpy's BLAS on one thread: the pipeline's matrix products are many and small, and
    BLAS threads only contend with ONNX Runtime and the Kafka client (10x slower measured)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency, but not a hard one
        return
    threadpool_limits(limits=1, user_api="blas")


class Pipeline:
    """Per-stream state for every stream seen, and the batched scoring step.

    ``keep_scores`` adds one dict per scored window to :attr:`BatchResult.scores` (stream,
    window index, start/end s, calibrated score) for score logs and parity checks.
    """

    def __init__(
        self,
        scorer: Scorer,
        alert_cfg: AlertConfig | None = None,
        tech_cfg: TechnicalConfig | None = None,
        keep_scores: bool = False,
        stepper: StreamStepper | None = None,
    ):
        self.scorer = scorer
        #: how windows are scored and what is kept per stream between them: the model's
        #: stream step, else its main graph window by window
        self.stepper = stepper or scorer.stepper or WholeWindows(scorer)
        self.spec = scorer.spec
        self.alert_cfg = alert_cfg or AlertConfig()
        self.tech_cfg = tech_cfg or TechnicalConfig()
        self.threshold = (
            self.alert_cfg.threshold
            if self.alert_cfg.threshold is not None
            else self.spec.threshold
        )
        model_critical = self.spec.thresholds.get("critical")
        self.critical = (
            float(model_critical)
            if self.alert_cfg.threshold is None and model_critical is not None
            else None
        )
        self.keep_scores = keep_scores
        self.streams: dict[str, StreamState] = {}
        #: resolved messages of streams forgotten (evicted, revoked), see :meth:`take_ended`
        self.ended: list[Alert] = []
        single_threaded_blas()

    def _state(self, chunk: Chunk, partition: int | None) -> StreamState:
        st = self.streams.get(chunk.stream)
        if st is None:
            spec = self.spec
            st = StreamState(
                StreamBuffer(chunk.stream, spec),
                AnomalyMachine(
                    chunk.stream,
                    self.alert_cfg,
                    self.threshold,
                    spec.name,
                    spec.version,
                    spec.leads,
                    step=spec.hop,
                    critical=self.critical,
                ),
                TechnicalMachine(chunk.stream, spec.name, spec.version, spec.leads),
                self.stepper.new_state(),
                partition,
            )
            self.streams[chunk.stream] = st
        st.partition = partition
        return st

    def process(self, items: list[Incoming], now: float | None = None) -> BatchResult:
        """Run one batch of chunks (in arrival order) through buffers, the model and alerts."""
        prep = self.prepare(items, now)
        return self.complete(prep, self.infer(prep))

    def infer(self, prep: Prepared) -> Inference | None:
        """The inference call of a prepared batch (None when there is nothing to run).

        ONNX Runtime releases the GIL, so the worker runs this in a thread while it decodes and
        prepares the next poll; it touches no stream state.
        """
        if prep.batch is None and prep.plan is None:
            return None
        t = time.perf_counter()
        stepped = self.stepper.step(prep.batch, prep.plan)
        return Inference(stepped, time.perf_counter() - t)

    def prepare(self, items: list[Incoming], now: float | None = None) -> Prepared:
        """Everything before inference: buffers, technical checks, and the windows to score.

        Stream buffers advance past the returned windows; :meth:`complete` must follow (in
        batch order) before the next ``prepare`` result is completed.
        """
        now = time.time() if now is None else now
        res = BatchResult()
        touched: dict[str, StreamState] = {}
        checks: list[tuple[StreamState, Chunk, PendingInput]] = []
        for item in items:
            chunk = item.chunk
            st = self._state(chunk, item.partition)
            try:
                events = st.buffer.accept(chunk, item.offset, now, defer=True)
            except Unprocessable as exc:
                res.rejected.append((item, exc.reason, str(exc)))
                if st.buffer.pre is None:
                    del self.streams[chunk.stream]
                continue
            except Exception as exc:  # never let one stream's chunk stop the worker
                log.exception(
                    "stream %s: chunk seq %s could not be processed", chunk.stream, chunk.seq
                )
                res.rejected.append((item, "unprocessable", f"{type(exc).__name__}: {exc}"))
                self.streams.pop(chunk.stream, None)
                touched.pop(chunk.stream, None)
                continue
            duplicate = False
            for ev in events:
                res.events[ev.kind] += 1
                if ev.kind == "duplicate":
                    duplicate = True
                elif ev.kind == "gap":
                    res.alerts.extend(
                        st.technical.gap(ev.start_s, ev.end_s, ev.detail, self.tech_cfg)
                    )
            if duplicate:
                continue
            checks.append((st, chunk, st.buffer.pending[-1]))
            touched[chunk.stream] = st
        if checks:
            self._gather(checks, res)
        preprocess_pending([st.buffer for st in touched.values()])
        parts = []
        primers: list[Primer] = []
        for st in touched.values():
            wins, suppressed = st.buffer.take_windows()
            res.suppressed += len(suppressed)
            if len(wins.index):
                parts.append((st, wins))
                continue
            buf = st.buffer
            wanted = self.stepper.primer(st.model, buf.generation, buf.next_start, buf.a_end)
            if wanted is not None:
                primers.append(Primer(st.model, buf.generation, buf.next_start, buf.span(*wanted)))
        cuts = [Cut(st.buffer.generation, wins.index) for st, wins in parts]
        plan = self.stepper.plan([st.model for st, _ in parts], cuts, primers)
        if not parts:
            return Prepared(res, parts, None, plan)
        batch = parts[0][1].data if len(parts) == 1 else np.concatenate([w.data for _, w in parts])
        return Prepared(res, parts, batch, plan)

    def complete(self, prep: Prepared, inference: Inference | None) -> BatchResult:
        """Feed a prepared batch's scores to the alert state machines and bring the streams'
        states past it; returns its result."""
        if inference is not None:
            stepped = inference.stepped
            prep.res.inference_s = inference.seconds
            if stepped.window_raw is not None:
                self._score(prep.parts, stepped, prep.res)
            self.stepper.commit(prep.plan, stepped)
            prep.res.carried, prep.res.primed = stepped.carried, stepped.primed
        return prep.res

    def _gather(
        self, checks: list[tuple[StreamState, Chunk, PendingInput]], res: BatchResult
    ) -> None:
        """The model's leads of every accepted chunk, gathered per group of equally shaped
        chunks in one copy: they become the pending input (contiguous, checked for missing
        samples) and feed the technical checks."""
        groups: dict[tuple, list[int]] = {}
        for i, (st, chunk, _) in enumerate(checks):
            # streams with the same input leads read the same columns; int16 frames with the
            # same gains convert alike, so only their model leads are converted, all at once
            key = (chunk.shape, st.buffer.leads_in, chunk.adc is None, id(chunk.conversion))
            groups.setdefault(key, []).append(i)
        for (_, _, no_clip, _), idx in groups.items():
            sel = checks[idx[0]][0].buffer.lead_sel
            chunks = [checks[i][1] for i in idx]
            conversion = chunks[0].conversion
            adc = None if no_clip else np.stack([c.adc[:, sel] for c in chunks])  # type: ignore[index]
            if conversion is not None and adc is not None:
                x = physical_leads(adc, conversion, sel)  # (chunks, n, leads)
            else:
                x = np.stack([c.samples[:, sel] for c in chunks])
            has_nan = np.isnan(x).any(axis=(1, 2)).tolist()
            for j, i in enumerate(idx):
                st, _, pending = checks[i]
                if pending.leads is st.buffer.leads_in:  # else the leads changed since
                    pending.x, pending.has_nan = x[j], has_nan[j]
            if self.tech_cfg.enabled:
                clipped = None if adc is None else adc_clipped(adc)
                self._technical([checks[i] for i in idx], x, clipped, res)

    def _technical(
        self,
        checks: list[tuple[StreamState, Chunk, PendingInput]],
        x: np.ndarray,
        clipped: np.ndarray | None,
        res: BatchResult,
    ) -> None:
        """Technical conditions of equally shaped chunks ``x`` ``(chunks, n, leads)``; windows
        overlapping a chunk that shows one are not scored."""

        def span(j: int) -> tuple[float, float]:
            chunk = checks[j][1]
            return chunk.t0, chunk.t0 + chunk.duration_s

        machines = [st.technical for st, _, _ in checks]
        alerts, flagged = check_streams(machines, x, span, self.tech_cfg, clipped)
        res.alerts.extend(alerts)
        for j, (st, _, _) in enumerate(checks):
            if flagged[j]:
                st.buffer.mark_bad(*span(j))

    def _score(
        self, parts: list[tuple[StreamState, Windows]], inf: Stepped, res: BatchResult
    ) -> None:
        point_raw, window_raw = inf.point_raw, inf.window_raw
        assert point_raw is not None and window_raw is not None
        res.windows = len(window_raw)
        scores = self.spec.normalise(window_raw.astype(np.float64))
        norm = self.spec.score_norm
        fs = self.spec.fs
        ks_all = (
            np.concatenate([w.index for _, w in parts]) if len(parts) > 1 else parts[0][1].index
        )
        delay = np.repeat(
            [st.buffer.pre.delay_s for st, _ in parts], [len(w.index) for _, w in parts]
        )
        starts_all = ks_all / fs - delay
        ends_all = starts_all + self.spec.window / fs
        sizes = [len(w.index) for _, w in parts]
        offsets = np.cumsum([0] + sizes[:-1])
        thr = np.repeat([st.anomaly.threshold for st, _ in parts], sizes)
        any_above = np.add.reduceat((scores >= thr).astype(np.int64), offsets) > 0
        res.alerts.extend(rhythm_alerts(parts, starts_all, fs))  # from the preprocessed windows
        for p, (st, wins) in enumerate(parts):
            machine = st.anomaly
            i, n = int(offsets[p]), sizes[p]
            if any_above[p] or machine.active or machine.pending or machine.needs_every_window:
                sc = scores[i : i + n]
                for j in range(n):
                    if sc[j] >= machine.threshold or machine.active or machine.pending:
                        point = (point_raw[i + j] - norm["center"]) / norm["scale"]
                    else:
                        point = None  # only needed for localisation of an alert
                    res.alerts.extend(
                        machine.update(
                            int(ks_all[i + j]),
                            float(sc[j]),
                            float(starts_all[i + j]),
                            float(ends_all[i + j]),
                            point,
                            fs,
                        )
                    )
            else:
                machine.skip(int(wins.index[-1]))  # all below threshold, nothing pending
        if self.keep_scores:
            names = np.repeat([st.buffer.stream for st, _ in parts], sizes)
            res.scores.extend(
                {
                    "stream": str(name),
                    "window": int(k),
                    "start_s": round(float(a), 4),
                    "end_s": round(float(b), 4),
                    "score": float(s),
                }
                for name, k, a, b, s in zip(
                    names, ks_all, starts_all, ends_all, scores, strict=True
                )
            )

    # ---------------------------------------------------------------- state housekeeping

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget the streams of revoked ``partitions``; returns how many were dropped.

        Their open alerts are resolved; the messages wait in :meth:`take_ended`."""
        gone = [s for s, st in self.streams.items() if st.partition in partitions]
        self._forget(gone, "its partition was revoked")
        return len(gone)

    def evict_idle(self, now: float, idle_s: float) -> int:
        """Forget streams with no chunk for ``idle_s`` seconds (ended streams release offsets).

        Their open alerts are resolved; the messages wait in :meth:`take_ended`."""
        gone = [s for s, st in self.streams.items() if now - st.buffer.last_seen > idle_s]
        self._forget(gone, f"no data for {idle_s:g} s")
        return len(gone)

    def take_ended(self) -> list[Alert]:
        """The ``resolved`` messages of alerts that were open on streams forgotten since the
        last call (evicted or revoked), oldest first; the list is emptied."""
        out, self.ended = self.ended, []
        return out

    def _forget(self, names: list[str], why: str) -> None:
        """Drop the state of streams ``names``, resolving their open anomaly and rhythm alerts
        at the stream time of the last sample received (``end`` stays the episode's end)."""
        for name in names:
            st = self.streams.pop(name)
            t = st.buffer.t_next
            msgs = st.anomaly.close(t)
            if st.anomaly.rhythm is not None:
                msgs += st.anomaly.rhythm.close(t)
            for a in msgs:
                a.detail = f"resolved: the stream ended ({why})"
            self.ended.extend(msgs)

    def needed_offsets(self) -> dict[int, int]:
        """Per partition, the lowest offset a future window still needs (see StreamBuffer)."""
        out: dict[int, int] = {}
        for st in self.streams.values():
            if st.partition is None:
                continue
            off = st.buffer.needed_offset()
            if off is not None and (st.partition not in out or off < out[st.partition]):
                out[st.partition] = off
        return out
