"""The broker-free core of the worker: chunks in, windows batched into one ONNX call, alerts out.

:class:`Pipeline` is what ``ecgstream run`` executes for every poll, and what
``ecgstream run --replay`` executes in one process without a broker. For a batch of chunks it
updates each stream's :class:`~ecgstream.streaming.buffers.StreamBuffer` (sequence checks,
lead mapping, causal preprocessing), checks technical conditions, cuts the complete windows of
*all* streams, scores them in one :meth:`~ecgstream.runtime.scorer.Scorer.score_windows` call
and feeds the calibrated scores to each stream's alert state machine.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as TallyCounter
from dataclasses import dataclass, field

import numpy as np

from ecgstream.alerts.rhythm import update_streams as rhythm_alerts
from ecgstream.alerts.state import Alert, AlertConfig, AnomalyMachine
from ecgstream.alerts.technical import TechnicalConfig, TechnicalMachine, check_chunks
from ecgstream.runtime.scorer import Scorer
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
    "CarryIn",
    "Primers",
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
    carried: int = 0  # windows scored with the sorts of their stream's previous window
    primed: int = 0  # streams whose next window's carry was computed ahead (Primers)
    suppressed: int = 0
    events: TallyCounter = field(default_factory=TallyCounter)
    inference_s: float = 0.0


@dataclass
class Prepared:
    """A batch cut into windows, waiting for its inference call (``batch`` None: no window).

    With a model's stream step, ``carry`` holds what each window takes over from its stream's
    previous window (see :meth:`Pipeline._carry_in`), and ``primers`` the streams whose next
    window has no previous window to take over from.
    """

    res: BatchResult
    parts: list[tuple[StreamState, Windows]]
    batch: np.ndarray | None
    carry: CarryIn | None = None
    primers: Primers | None = None


@dataclass
class CarryIn:
    """The previous windows' sorts for the batch rows ``rows`` that have them (the others go
    through the main graph); ``generations`` are the parts' buffer generations."""

    rows: np.ndarray
    carried: np.ndarray
    floors: np.ndarray
    generations: list[int]


@dataclass
class Primers:
    """Streams whose next window (starting at ``starts + hop``) has no previous window scored
    to take over from, and ``spans`` ``(P, leads, span)``: the last samples that previous
    window would have had.

    The carry is computed from them one hop before the window is complete, so a stream's first
    window (at its start, after a gap or a rebalance) goes through the stream step like every
    later one instead of costing the whole graph when it is due.
    """

    states: list[StreamState]
    starts: list[int]
    generations: list[int]
    spans: np.ndarray


@dataclass
class Inference:
    """Raw model output of a prepared batch and the seconds the call took (with a stream step,
    also every window's carry for the window one hop later)."""

    point_raw: np.ndarray | None
    window_raw: np.ndarray | None
    seconds: float
    next_carried: np.ndarray | None = None
    next_floors: np.ndarray | None = None
    primed: tuple[np.ndarray, np.ndarray] | None = None  # the primers' carried sorts, floors


@dataclass
class StreamState:
    """Everything the worker keeps per stream."""

    buffer: StreamBuffer
    anomaly: AnomalyMachine
    technical: TechnicalMachine
    partition: int | None = None
    #: (buffer generation, window start, carried sorts, carried floors) of the last window
    #: scored, for the stream step of the window one hop later
    carry: tuple[int, int, np.ndarray, np.ndarray] | None = None
    #: (buffer generation, window start) of the last primer cut (see :class:`Primers`)
    primed: tuple[int, int] | None = None


def _keep_carry(
    st: StreamState, generation: int, start: int, sorts: np.ndarray, floors: np.ndarray
) -> None:
    """Keep the carry of ``st``'s window at ``start`` for the window one hop later."""
    old = st.carry
    if old is None:
        st.carry = (generation, start, sorts.copy(), floors.copy())
        return
    # into the stream's arrays (prepare copied them into its batch already)
    np.copyto(old[2], sorts)
    np.copyto(old[3], floors)
    st.carry = (generation, start, old[2], old[3])


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
    ):
        self.scorer = scorer
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
        """The inference call of a prepared batch (None without windows).

        ONNX Runtime releases the GIL, so the worker runs this in a thread while it decodes and
        prepares the next poll; it touches no stream state.
        """
        if prep.batch is None and prep.primers is None:
            return None
        t = time.perf_counter()
        primed = None
        if prep.primers is not None:
            primed = self.scorer.carry_after(prep.primers.spans)
        carry = prep.carry
        if prep.batch is None:
            return Inference(None, None, time.perf_counter() - t, primed=primed)
        if carry is None:
            point_raw, window_raw = self.scorer.score_windows(prep.batch)
            return Inference(point_raw, window_raw, time.perf_counter() - t)
        batch, rows = prep.batch, carry.rows
        if len(rows) == len(batch):  # every window takes over its previous window's sorts
            out = self.scorer.score_carried(batch, carry.carried, carry.floors)
        elif not len(rows):
            out = self.scorer.score_windows_carry(batch)
        else:  # the others (no previous window to take over from) go through the whole graph
            fresh = np.setdiff1d(np.arange(len(batch)), rows)
            stepped = self.scorer.score_carried(batch[rows], carry.carried, carry.floors)
            whole = self.scorer.score_windows_carry(batch[fresh])
            out = tuple(np.empty((len(batch), *a.shape[1:]), a.dtype) for a in stepped)
            for o, a, b in zip(out, stepped, whole, strict=True):
                o[rows], o[fresh] = a, b
        point_raw, window_raw, next_c, next_f = out
        return Inference(point_raw, window_raw, time.perf_counter() - t, next_c, next_f, primed)

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
        unprimed: list[StreamState] = []
        stepped = self.scorer.stream_layout is not None
        for st in touched.values():
            wins, suppressed = st.buffer.take_windows()
            res.suppressed += len(suppressed)
            if len(wins.index):
                parts.append((st, wins))
            elif stepped and self._primer_due(st):
                unprimed.append(st)
        primers = self._primers(unprimed) if unprimed else None
        if not parts:
            return Prepared(res, parts, None, primers=primers)
        batch = parts[0][1].data if len(parts) == 1 else np.concatenate([w.data for _, w in parts])
        return Prepared(res, parts, batch, self._carry_in(parts, len(batch)), primers)

    def _primer_due(self, st: StreamState) -> bool:
        """Whether ``st``'s next window needs a primer now: its previous window's samples are
        all in and that window was not scored (nor primed) since the buffer's last restart."""
        buf, hop = st.buffer, self.spec.hop
        start = buf.next_start
        if buf.a_end < start + self.spec.window - hop:
            return False
        c = st.carry
        if c is not None and c[0] == buf.generation and c[1] + hop == start:
            return False
        key = (buf.generation, start - hop)
        if st.primed == key:
            return False
        st.primed = key
        return True

    def _primers(self, states: list[StreamState]) -> Primers:
        """The spans of ``states``' previous windows (zeros before their buffers' samples: only
        segments of the next window are carried, and those are all in)."""
        lay = self.scorer.stream_layout
        assert lay is not None
        span, window = lay["span"], self.spec.window
        starts, generations, spans = [], [], []
        for st in states:
            buf = st.buffer
            generation, start = st.primed  # type: ignore[misc]
            starts.append(start)
            generations.append(generation)
            spans.append(buf.span(start + window - span, start + window))
        return Primers(states, starts, generations, np.stack(spans))

    def _carry_in(self, parts: list[tuple[StreamState, Windows]], n: int) -> CarryIn | None:
        """What each window of a batch takes over from its stream's previous window (None
        without a stream step). A stream's first window in a batch has it when its previous
        window was scored since the buffer's last restart; later ones in the same batch don't
        (their previous window is being scored in this very call)."""
        lay = self.scorer.stream_layout
        if lay is None:
            return None
        rows, carried, floors, generations = [], [], [], []
        row, hop = 0, self.spec.hop
        for st, wins in parts:
            generation = st.buffer.generation
            generations.append(generation)
            c = st.carry
            if c is not None and c[0] == generation and c[1] + hop == int(wins.index[0]):
                rows.append(row)
                carried.append(c[2])
                floors.append(c[3])
            row += len(wins.index)
        if not rows:
            leads = len(self.spec.leads)
            empty_c = np.zeros((0, leads, lay["carry"], lay["segment"]), np.float32)
            empty_f = np.zeros((0, leads, lay["carry_floors"], lay["floor_width"]), np.float32)
            return CarryIn(np.zeros(0, np.int64), empty_c, empty_f, generations)
        return CarryIn(np.array(rows), np.stack(carried), np.stack(floors), generations)

    def complete(self, prep: Prepared, inference: Inference | None) -> BatchResult:
        """Feed a prepared batch's scores to the alert state machines; returns its result."""
        if inference is not None:
            prep.res.inference_s = inference.seconds
            if inference.window_raw is not None:
                self._score(prep.parts, inference, prep.res)
            if prep.carry is not None:
                self._hand_over(prep.parts, inference, prep.carry, prep.res)
            if prep.primers is not None and inference.primed is not None:
                primers, (sorts, floors) = prep.primers, inference.primed
                prep.res.primed = len(primers.states)
                for i, st in enumerate(primers.states):
                    _keep_carry(st, primers.generations[i], primers.starts[i], sorts[i], floors[i])
        return prep.res

    @staticmethod
    def _hand_over(
        parts: list[tuple[StreamState, Windows]], inf: Inference, carry: CarryIn, res: BatchResult
    ) -> None:
        """Keep each stream's carry from its last window in the batch, for the window one hop
        later (:meth:`_carry_in`)."""
        res.carried = len(carry.rows)
        next_carried, next_floors = inf.next_carried, inf.next_floors
        assert next_carried is not None and next_floors is not None
        row = -1
        for p, (st, wins) in enumerate(parts):
            row += len(wins.index)
            generation = carry.generations[p]
            _keep_carry(st, generation, int(wins.index[-1]), next_carried[row], next_floors[row])

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
        """Technical conditions of equally shaped chunks ``x`` ``(chunks, n, leads)``."""
        flags = check_chunks(x, self.tech_cfg, clipped)  # name -> (chunks, leads) bool
        any_flag = np.zeros(len(checks), bool)
        for mask in flags.values():
            any_flag |= mask.any(axis=1)
        flagged = any_flag.tolist()
        for j, (st, chunk, _) in enumerate(checks):
            if not flagged[j] and not st.technical.any_active:
                continue
            conds = {
                name: (np.flatnonzero(mask[j]).tolist(), self.tech_cfg.describe(name))
                for name, mask in flags.items()
            }
            t1 = chunk.t0 + chunk.duration_s
            if flagged[j]:
                st.buffer.mark_bad(chunk.t0, t1)
            res.alerts.extend(st.technical.update(conds, chunk.t0, t1))

    def _score(
        self, parts: list[tuple[StreamState, Windows]], inf: Inference, res: BatchResult
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
        """Forget the streams of revoked ``partitions``; returns how many were dropped."""
        gone = [s for s, st in self.streams.items() if st.partition in partitions]
        for s in gone:
            del self.streams[s]
        return len(gone)

    def evict_idle(self, now: float, idle_s: float) -> int:
        """Forget streams with no chunk for ``idle_s`` seconds (ended streams release offsets)."""
        gone = [s for s, st in self.streams.items() if now - st.buffer.last_seen > idle_s]
        for s in gone:
            del self.streams[s]
        return len(gone)

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
