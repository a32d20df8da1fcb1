"""Per-stream bookkeeping: sequence and time checks, lead mapping and fixed windows.

A :class:`StreamBuffer` turns one stream's chunks (raw samples at the source rate) into model
windows. Its preprocessing state is a :class:`~ecgstream.signals.bank.StreamFilter` (the
:class:`~ecgstream.signals.preprocess.Preprocessor` that ``ecgstream score`` uses, so the samples
it windows are the samples ``ecgstream score`` windows), restarted where the stream restarts;
:func:`preprocess_pending` runs the filters of many streams side by side.

Windows are counted from the stream start, as ``window_starts(n, window, hop)`` counts them
offline. Times are absolute model-rate sample indices (sample ``a`` is ``a / fs`` seconds since
the Unix epoch); the stream start is ``t0 - seq * duration`` of the first chunk a worker sees,
so with chunks of constant length every worker, also one taking over mid-stream, puts the
windows in the same places. A window is identified by its absolute start sample (its alert id
derives from it), and the grid survives gaps and restarts. Streams that start at different
times complete their windows at different times, which spreads the inference load.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from ecgstream.runtime.model_file import ModelSpec
from ecgstream.signals.bank import StreamFilter, process_many
from ecgstream.signals.records import RecordError, lead_indices
from ecgstream.streaming.wire import MAX_FS, MIN_FS, Chunk

#: a jump of ``t0`` further ahead than this (s) is the device clock jumping, not missing data:
#: the stream starts over without a gap alert
MAX_GAP_S = 3600.0

log = logging.getLogger(__name__)

__all__ = [
    "Unprocessable",
    "StreamBuffer",
    "StreamEvent",
    "Windows",
    "PendingInput",
    "LeadMismatch",
    "preprocess_pending",
]


class Unprocessable(ValueError):
    """A chunk that passed the wire format but cannot feed the model; ``reason`` is a short code."""

    reason = "unprocessable"

    def __init__(self, detail: str, reason: str | None = None):
        super().__init__(detail)
        if reason:
            self.reason = reason


class LeadMismatch(Unprocessable):
    """A stream's leads cannot be mapped onto the model's leads."""

    reason = "lead_mismatch"


@dataclass
class StreamEvent:
    """Something about the stream itself: ``kind`` is ``duplicate``, ``gap`` or ``reset``.

    ``start_s`` / ``end_s`` bound the affected time span (seconds since the epoch).
    """

    kind: str
    start_s: float
    end_s: float
    detail: str = ""


@dataclass(slots=True)
class PendingInput:
    """Accepted input of the model's leads ``(n, leads)`` at the source rate, not yet
    preprocessed; ``has_nan`` says whether it has missing samples (None: not checked yet),
    ``leads`` is the stream's :attr:`StreamBuffer.leads_in` it was selected with.

    ``x`` may be left None and set later (the worker gathers the leads of many chunks at
    once); :meth:`input` then selects columns ``sel`` of ``chunk``.
    """

    x: np.ndarray | None
    has_nan: bool | None = None
    leads: tuple[str, ...] = ()
    chunk: Chunk | None = None
    sel: slice | list[int] | None = None

    def input(self) -> np.ndarray:
        if self.x is None:
            samples = self.chunk.samples  # type: ignore[union-attr]
            self.x = samples if self.sel is None else samples[:, self.sel]
        return self.x


@dataclass
class Windows:
    """Complete windows of one stream: ``index`` ``(n,)`` absolute start samples at the model
    rate (the window ids), ``data`` ``(n, leads, window)``."""

    stream: str
    index: np.ndarray
    data: np.ndarray


class _Empty:
    """Cached empty window arrays, one per (leads, window)."""

    def __init__(self) -> None:
        self._cache: dict = {}

    def get(self, n_leads: int, window: int) -> np.ndarray:
        key = (n_leads, window)
        if key not in self._cache:
            self._cache[key] = np.zeros((0, n_leads, window), np.float32)
        return self._cache[key]


_EMPTY = _Empty()
_NO_STARTS = np.zeros(0, np.int64)
_NO_STARTS.flags.writeable = False


def _column_selector(idx: list[int]) -> slice | list[int]:
    """``idx`` as a basic slice when the columns are evenly spaced, so selecting them is a view."""
    if not idx:
        return idx
    step = idx[1] - idx[0] if len(idx) > 1 else 1
    if step > 0 and idx == list(range(idx[0], idx[-1] + 1, step)):
        return slice(idx[0], idx[-1] + 1, step)
    return idx


class StreamBuffer:
    """Windows one stream for one model; ``accept`` chunks, then ``take_windows``.

    ``max_skew_s`` is how far a chunk's ``t0`` may differ from where the previous chunk ended
    before it counts as a gap (seconds).
    """

    def __init__(self, stream: str, spec: ModelSpec, max_skew_s: float = 0.05):
        self.stream = stream
        self.spec = spec
        self.fs = spec.fs
        self.window, self.hop = int(spec.window), int(spec.hop)
        self.max_skew_s = max_skew_s
        self.pre: StreamFilter | None = None  # the stream's filters (signals.bank)
        self.fs_in = 0.0
        self.leads_in: tuple[str, ...] = ()
        self.lead_idx: list[int] = []
        self.lead_sel: slice | list[int] = []  # lead_idx as a column selector (a view if it can)
        self._leads_seen: list[str] = []  # leads_in as a list, to compare with a chunk's
        self._all_leads = False  # lead_idx selects every input lead in order
        self.next_seq = -1
        self.t_next = 0.0  # time (s) the next chunk should start at
        self.n_in = 0  # input samples since the preprocessor (re)started
        self.t_start = 0.0  # t0 of the first chunk since the (re)start
        self.a_origin = 0  # absolute model-rate index of the preprocessor's first output
        self._buf = np.zeros((0, len(spec.leads)), np.float32)
        self._parts: list[np.ndarray] = []  # preprocessed samples after _buf, not yet joined
        self._n_parts = 0
        self.buf_a0 = 0  # absolute index of buf[0]
        self.anchor: int | None = None  # absolute model-rate index of the stream start
        self.next_k = 0  # next window (counted from the stream start) to emit
        self.generation = 0  # counts preprocessor (re)starts: samples across one do not join
        self.bad: list[tuple[int, int]] = []  # absolute model-rate ranges not to score
        self.chunks: deque[tuple[int, int]] = deque()  # (absolute start, offset) not yet released
        self.last_seen = 0.0  # wall clock of the last chunk (for idle eviction)
        self.pending: list[PendingInput] = []  # accepted input not yet preprocessed
        self._no_windows: Windows | None = None  # what take_windows returns without a window
        pcfg = spec.preprocess_config
        self.min_fs = 2.0 * (pcfg.lowpass_hz or pcfg.fs / 2)  # lowest usable input rate, Hz

    # ---------------------------------------------------------------- input

    def _map_leads(self, chunk: Chunk) -> None:
        if chunk.leads == self._leads_seen:
            return
        need = self.spec.leads
        if len(chunk.leads) < len(need):
            raise LeadMismatch(
                f"stream has leads {chunk.leads}, model {self.spec.name} needs {need}"
            )
        try:
            self.lead_idx = lead_indices(chunk.leads, need)
        except RecordError as exc:
            raise LeadMismatch(f"{exc}; model {self.spec.name} needs {need}") from None
        self.leads_in = tuple(chunk.leads)
        self._leads_seen = list(chunk.leads)
        self.lead_sel = _column_selector(self.lead_idx)
        self._all_leads = self.lead_idx == list(range(len(chunk.leads)))

    def _restart(self, chunk: Chunk) -> None:
        self.flush()
        self.generation += 1
        self.pre = StreamFilter(self.spec.preprocess_config, chunk.fs, len(self.spec.leads))
        self.fs_in = chunk.fs
        self.t_start = chunk.t0
        self.n_in = 0
        self.a_origin = int(round(chunk.t0 * self.fs))
        self._buf = np.zeros((0, len(self.spec.leads)), np.float32)
        self._parts.clear()
        self._n_parts = 0
        self.buf_a0 = self.a_origin
        self.next_k = max(self.next_k, -(-(self.a_origin - self.anchor) // self.hop))

    def _start_over(
        self, chunk: Chunk, duration: float, kind: str = "", detail: str = ""
    ) -> StreamEvent:
        """Begin the stream anew at ``chunk``, as a worker that never saw it would: its window
        grid counts from ``t0 - seq * duration`` again, and nothing before it is needed.

        Returns a ``kind`` event (logged) for a stream that had samples already.
        """
        if kind:
            log.warning("stream %s: %s (%s); the stream starts over", self.stream, kind, detail)
        self.anchor = int(round((chunk.t0 - chunk.seq * duration) * self.fs))
        self.next_k = 0
        self.chunks.clear()
        self.bad = []
        self._restart(chunk)
        return StreamEvent(kind, chunk.t0, chunk.t0, detail)

    def accept(
        self, chunk: Chunk, offset: int | None = None, now: float = 0.0, defer: bool = False
    ) -> list[StreamEvent]:
        """Feed one chunk; returns stream events (duplicates are dropped, gaps restart filters).

        With ``defer`` the samples wait in :attr:`pending` until :meth:`flush` or
        :func:`preprocess_pending` (which batches many streams); missing samples are filled
        when they are preprocessed. Raises :class:`LeadMismatch` when the chunk's leads cannot
        feed the model.
        """
        self._map_leads(chunk)
        fs = chunk.fs
        if not MIN_FS <= fs <= MAX_FS:
            raise Unprocessable(
                f"sampling rate {fs:.6g} Hz outside [{MIN_FS:g}, {MAX_FS:g}]", "bad_fs"
            )
        min_fs = self.min_fs
        if fs < min_fs:  # also bounds the work: upsampling 0.01 Hz would make GBs of samples
            raise Unprocessable(
                f"sampling rate {chunk.fs:g} Hz is below {min_fs:g} Hz, twice the upper band edge "
                f"of model {self.spec.name}",
                "unsupported_rate",
            )
        shape = chunk.shape
        if len(shape) != 2 or shape[1] != len(chunk.leads) or not shape[0]:
            raise Unprocessable(
                f"samples of shape {shape} for {len(chunk.leads)} leads", "bad_samples"
            )
        n = shape[0]
        duration = n / fs
        if not math.isfinite(chunk.t0) or not math.isfinite(chunk.seq * duration):
            raise Unprocessable("t0 and seq must give a finite stream start", "bad_t0")
        events: list[StreamEvent] = []
        if self.pre is None:
            self._start_over(chunk, duration)
        else:
            skew = chunk.t0 - self.t_next
            behind = skew < -self.max_skew_s  # starts before the stream's samples end
            if chunk.seq < self.next_seq:
                if behind:  # a chunk already had (a producer retry, out of order): dropped,
                    # and it does not keep the stream alive (idle eviction)
                    return [
                        StreamEvent("duplicate", chunk.t0, chunk.t0 + duration, f"seq {chunk.seq}")
                    ]
                # the count restarted while time went on: the device rebooted
                events.append(self._start_over(chunk, duration, "seq_restart",
                                               f"seq {self.next_seq - 1} -> {chunk.seq}"))  # fmt: skip
            elif fs != self.fs_in:
                events.append(
                    StreamEvent(
                        "reset", chunk.t0, chunk.t0, f"rate {self.fs_in:g} -> {chunk.fs:g} Hz"
                    )
                )
                self._restart(chunk)
            elif behind:
                if chunk.t0 + duration > self.t_next - self.max_skew_s:
                    # overlaps what we already have: treat as a duplicate of that time span
                    return [
                        StreamEvent("duplicate", chunk.t0, self.t_next, f"seq {chunk.seq} overlaps")
                    ]
                # a new chunk wholly before the stream's end: the device clock went back
                events.append(self._start_over(chunk, duration, "time_back",
                                               f"t0 {-skew:.6g} s before the stream's end"))  # fmt: skip
            elif skew > MAX_GAP_S:  # a clock jump, not missing data: no gap alert
                events.append(self._start_over(chunk, duration, "time_jump",
                                               f"t0 {skew:.6g} s after the stream's end"))  # fmt: skip
            elif chunk.seq > self.next_seq or skew > self.max_skew_s:
                missing = chunk.seq - self.next_seq
                events.append(
                    StreamEvent(
                        "gap",
                        self.t_next,
                        chunk.t0,
                        f"{missing} chunk(s), {max(skew, 0):.3f} s missing",
                    )
                )
                self._restart(chunk)
        self.last_seen = now
        self.next_seq = chunk.seq + 1
        a_chunk = self.a_origin + int(math.floor(self.n_in * self.fs / self.fs_in + 1e-9))
        if offset is not None:
            self.chunks.append((a_chunk, offset))
        self.n_in += n
        self.t_next = self.t_start + self.n_in / self.fs_in
        sel = None if self._all_leads else self.lead_sel
        self.pending.append(PendingInput(None, None, self.leads_in, chunk, sel))
        if not defer:
            self.flush()
        return events

    def flush(self) -> None:
        """Preprocess the pending input of this stream alone."""
        for p in self.pending:
            self.extend(self.pre.process(p.input(), p.has_nan))  # type: ignore[union-attr]
        self.pending.clear()

    def extend(self, y: np.ndarray) -> None:
        """Append preprocessed samples (model rate); joined when windows are cut."""
        if len(y):
            self._parts.append(y)
            self._n_parts += len(y)

    @property
    def buf(self) -> np.ndarray:
        """Preprocessed samples (model rate) from absolute index :attr:`buf_a0` on."""
        if self._parts:
            parts = [self._buf, *self._parts] if len(self._buf) else self._parts
            self._buf = np.concatenate(parts) if len(parts) > 1 else parts[0]
            self._parts = []
            self._n_parts = 0
        return self._buf

    def mark_bad(self, start_s: float, end_s: float) -> None:
        """Do not score windows overlapping ``[start_s, end_s)`` (a technical condition)."""
        pad = int(math.ceil((self.pre.delay_s if self.pre else 0.0) * self.fs)) + 1
        self.bad.append((int(math.floor(start_s * self.fs)), int(math.ceil(end_s * self.fs)) + pad))

    # ---------------------------------------------------------------- output

    @property
    def a_end(self) -> int:
        """Absolute index one past the last preprocessed sample."""
        return self.buf_a0 + len(self._buf) + self._n_parts

    @property
    def next_start(self) -> int:
        """Absolute model-rate start sample of the next window to emit."""
        return (self.anchor or 0) + self.next_k * self.hop

    def take_windows(self) -> tuple[Windows, np.ndarray]:
        """Complete windows not yet emitted, and the start samples of suppressed ones (bad spans).

        Samples no later window needs are dropped from the buffer.
        """
        if self.pending:
            self.flush()
        w, h = self.window, self.hop
        base = self.anchor or 0
        k_last = (self.a_end - w - base) // h  # last window that is complete
        if k_last < self.next_k:
            # samples no window needs are dropped when the next window is cut (the buffer
            # holds at most a window and a hop until then); only bad spans are pruned here
            if self.bad:
                self._drop_before(self.next_start)
            if self._no_windows is None:
                self._no_windows = Windows(
                    self.stream, _NO_STARTS, _EMPTY.get(len(self.spec.leads), w)
                )
            return self._no_windows, _NO_STARTS
        starts = [base + k * h for k in range(self.next_k, k_last + 1)]
        suppressed: list[int] = []
        if self.bad:
            keep = [a for a in starts if not any(a < b and a + w > lo for lo, b in self.bad)]
            suppressed = [a for a in starts if a not in keep]
            starts = keep
        buf = self.buf
        if len(starts) == 1:
            r = starts[0] - self.buf_a0
            data = buf[r : r + w].T[None]
        elif starts:
            data = np.stack([buf[a - self.buf_a0 : a - self.buf_a0 + w].T for a in starts])
        else:
            data = _EMPTY.get(buf.shape[1], w)
        self.next_k = k_last + 1
        self._drop_before(self.next_start)
        return Windows(self.stream, np.array(starts, np.int64), data), np.array(
            suppressed, np.int64
        )

    def span(self, a0: int, a1: int) -> np.ndarray:
        """Preprocessed samples ``(leads, a1 - a0)`` of the absolute model-rate range
        ``[a0, a1)``; zeros before :attr:`buf_a0` (samples the buffer never had or dropped)."""
        buf = self.buf
        out = np.zeros((buf.shape[1], a1 - a0), np.float32)
        lo = max(a0, self.buf_a0)
        if a1 > lo:
            out[:, lo - a0 :] = buf[lo - self.buf_a0 : a1 - self.buf_a0].T
        return out

    def _drop_before(self, keep_from: int) -> None:
        """Forget samples and bad spans before absolute index ``keep_from`` (no window needs them)."""
        if keep_from > self.buf_a0 and len(self._buf) + self._n_parts:
            buf = self.buf
            drop = min(keep_from - self.buf_a0, len(buf))
            self._buf = buf[drop:]
            self.buf_a0 += drop
        if self.bad:
            self.bad = [(lo, b) for lo, b in self.bad if b > keep_from]

    def window_times(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start and end times (s since the epoch, at the source, delay removed) of windows
        starting at absolute model-rate samples ``starts``."""
        delay = self.pre.delay_s if self.pre else 0.0
        start = starts / self.fs - delay
        return start, start + self.window / self.fs

    def needed_offset(self) -> int | None:
        """Offset of the oldest chunk a future window still needs (None if nothing tracked).

        Committing this offset (not the last one processed) means a worker that takes over the
        partition re-reads enough samples to rebuild every window not yet scored.
        """
        need = self.next_start
        while len(self.chunks) >= 2 and self.chunks[1][0] <= need:
            self.chunks.popleft()
        return self.chunks[0][1] if self.chunks else None


# ---------------------------------------------------------------- batching across streams


def preprocess_pending(buffers: list[StreamBuffer]) -> None:
    """Preprocess the pending input of many streams, batched (each stream's chunks in order)."""
    while True:
        active = [b for b in buffers if b.pending]
        if not active:
            return
        entries = [b.pending.pop(0) for b in active]
        ys = process_many(
            [b.pre for b in active],  # type: ignore[misc]
            [p.input() for p in entries],
            [p.has_nan for p in entries],
        )
        for b, y in zip(active, ys, strict=True):
            b.extend(y)
