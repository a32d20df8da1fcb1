"""Per-stream state: sequence checks, lead mapping, causal preprocessing and fixed windows.

A :class:`StreamBuffer` turns one stream's chunks (raw samples at the source rate) into model
windows. It reuses :class:`~ecgstream.signals.preprocess.Preprocessor`, so the samples it
windows are the samples ``ecgstream score`` windows.

Windows are counted from the stream start, as ``window_starts(n, window, hop)`` counts them
offline. Times are absolute model-rate sample indices (sample ``a`` is ``a / fs`` seconds since
the Unix epoch); the stream start is ``t0 - seq * duration`` of the first chunk a worker sees,
so with chunks of constant length every worker, also one taking over mid-stream, puts the
windows in the same places. A window is identified by its absolute start sample (its alert id
derives from it), and the grid survives gaps and restarts. Streams that start at different
times complete their windows at different times, which spreads the inference load.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import signal as sps

from ecgstream.runtime.model_file import ModelSpec
from ecgstream.signals.preprocess import (
    CausalBandpass,
    PreprocessConfig,
    Preprocessor,
    StreamingResampler,
)
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
    "preprocess_many",
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


@functools.lru_cache(maxsize=64)
def _template(cfg: PreprocessConfig, fs_in: float, n_leads: int) -> Preprocessor:
    return Preprocessor(cfg, fs_in, n_leads)


def new_preprocessor(cfg: PreprocessConfig, fs_in: float, n_leads: int) -> Preprocessor:
    """A fresh :class:`Preprocessor`, copied from a cached one (filter design costs ~1 ms)."""
    return copy.deepcopy(_template(cfg, fs_in, n_leads))


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
        self.pre: Preprocessor | None = None
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
        self._last_x: np.ndarray | None = None  # the last input preprocessed (NaN filled)
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
        self.pre = new_preprocessor(self.spec.preprocess_config, chunk.fs, len(self.spec.leads))
        self.fs_in = chunk.fs
        self.t_start = chunk.t0
        self.n_in = 0
        self.a_origin = int(round(chunk.t0 * self.fs))
        self._buf = np.zeros((0, len(self.spec.leads)), np.float32)
        self._parts.clear()
        self._n_parts = 0
        self.buf_a0 = self.a_origin
        self.next_k = max(self.next_k, -(-(self.a_origin - self.anchor) // self.hop))
        self._last_x = None

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
            x = p.input()
            has_nan = bool(np.isnan(x).any()) if p.has_nan is None else p.has_nan
            self.extend(self.pre.process(self.fill_missing(x, has_nan)))  # type: ignore[union-attr]
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

    @property
    def last_value(self) -> np.ndarray | None:
        """Per lead, the last input sample preprocessed (missing ones filled), None at a start."""
        return None if self._last_x is None else self._last_x[-1]

    def fill_missing(self, x: np.ndarray, has_nan: bool) -> np.ndarray:
        """Input ``x`` about to be preprocessed, NaN (missing) samples replaced by the lead's
        last valid value so filters stay finite; ``has_nan`` says whether there are any."""
        if has_nan:
            nan = np.isnan(x)
            x = x.copy()
            last = self.last_value
            for lead in np.flatnonzero(nan.any(axis=0)):
                col, bad = x[:, lead], nan[:, lead]
                valid = np.flatnonzero(~bad)
                prev = last[lead] if last is not None else 0.0
                if len(valid) == 0:
                    col[:] = prev
                    continue
                fill_idx = np.maximum.accumulate(np.where(bad, -1, np.arange(len(col))))
                first = valid[0]
                col[:first] = prev
                col[first:] = col[fill_idx[first:]]
        if len(x):
            self._last_x = x
        return x

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
        xs = [p.input() for p in entries]
        with_nan = [i for i, p in enumerate(entries) if p.has_nan]
        unchecked = [i for i, p in enumerate(entries) if p.has_nan is None]
        if unchecked:
            with_nan += [unchecked[k] for k in _with_nan([xs[i] for i in unchecked])]
        for i in with_nan:
            xs[i] = active[i].fill_missing(xs[i], True)
        for b, x in zip(active, xs, strict=True):
            if len(x):
                b._last_x = x
        ys = preprocess_many([b.pre for b in active], xs)
        for b, y in zip(active, ys, strict=True):
            b.extend(y)


def _with_nan(xs: list[np.ndarray]) -> list[int]:
    """Indices of the arrays in ``xs`` that hold a NaN, checked in one pass when they can be
    joined (the same number of columns, none empty)."""
    if len({x.shape[1:] for x in xs}) == 1 and all(len(x) for x in xs):
        rows = np.isnan(np.concatenate(xs))
        if not rows.any():
            return []
        if rows.ndim > 1:
            rows = rows.any(axis=tuple(range(1, rows.ndim)))
        starts = np.cumsum([0] + [len(x) for x in xs[:-1]])
        return np.flatnonzero(np.logical_or.reduceat(rows, starts)).tolist()
    return [i for i, x in enumerate(xs) if np.isnan(x).any()]


def preprocess_many(pres: list[Preprocessor], xs: list[np.ndarray]) -> list[np.ndarray]:
    """``[p.process(x) for p, x in zip(pres, xs)]``, computed in as few numpy calls as possible.

    Streams whose filter state has the same shape (same rates, chunk length and phase, the
    usual case) are stacked side by side, so one resampling product and one ``sosfilt`` call
    serve them all. Filters act on each column independently, so the result equals the
    per-stream result; each :class:`Preprocessor` keeps its own state. Streams past their first
    chunk go through both stages as one block; the others stage by stage.
    """
    out: list = [None] * len(pres)
    rest: list[int] = []
    groups: dict = {}
    for i, (p, x) in enumerate(zip(pres, xs, strict=True)):
        key = _steady_key(p, x)
        if key is None:
            rest.append(i)
        else:
            groups.setdefault(key, []).append(i)
    for idx in groups.values():
        group = [pres[i] for i in idx]
        x_g = [xs[i] for i in idx]
        r0 = group[0].resampler
        if r0.identity:
            y = np.concatenate(x_g, axis=1, dtype=np.float32)
        else:
            y = _resample_group([p.resampler for p in group], x_g)
        y = _bandpass_group([p.bandpass for p in group], y)
        _split(y, idx, x_g[0].shape[1], out)
    if rest:
        ys = _resample_many([pres[i].resampler for i in rest], [xs[i] for i in rest])
        ys = _bandpass_many([pres[i].bandpass for i in rest], ys)
        for i, y in zip(rest, ys, strict=True):
            out[i] = y
    return out


def _steady_key(p: Preprocessor, x: np.ndarray) -> tuple | None:
    """What both batched stages depend on, or None when a stage cannot be batched for ``x``."""
    r, bp = p.resampler, p.bandpass
    if bp.sos is None or bp._zi is None or len(x) == 0:
        return None
    if r.identity:
        return (None, len(x), x.shape[1], bp.group_key)
    key = _resample_key(r, x)
    if key is None or key[4] >= ((key[3] + len(x) - 1) * r.up) // r.down + 1:
        return None  # no output sample to band-pass
    return (key, bp.group_key)


def _split(y: np.ndarray, idx: list[int], width: int, out: list) -> None:
    """Hand the columns of a group's output back to its streams (``out[idx[j]]``)."""
    for j, i in enumerate(idx):
        out[i] = y[:, j * width : (j + 1) * width]


def _groups(keys: list) -> dict:
    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return groups


def _resample_key(r: StreamingResampler, x: np.ndarray) -> tuple | None:
    """Everything a resampling step of ``x`` depends on (see StreamingResampler.process), or
    None when it cannot be batched."""
    if r.identity or r._history is None or len(x) == 0:
        return None
    offset = r._buf_start * r.up // r.down
    return (r.up, r.down, len(r.h), r._n_in - r._buf_start, r._n_out - offset, len(x), x.shape[1])


def _resample_many(rs: list[StreamingResampler], xs: list[np.ndarray]) -> list[np.ndarray]:
    out: list = [None] * len(rs)
    keys = []
    for i, (r, x) in enumerate(zip(rs, xs, strict=True)):
        key = _resample_key(r, x)
        if key is None:
            out[i] = r.process(x)
        keys.append(key)
    for key, idx in _groups(keys).items():
        if key is not None:
            y = _resample_group([rs[i] for i in idx], [xs[i] for i in idx])
            _split(y, idx, xs[idx[0]].shape[1], out)
    return out


def _resample_group(rs: list[StreamingResampler], xs: list[np.ndarray]) -> np.ndarray:
    """Resample streams with equal :func:`_resample_key` side by side; returns float32
    ``(n_out, columns)`` and advances each resampler's state."""
    r0 = rs[0]
    width = xs[0].shape[1]
    n_hist, n_x = len(r0._history), len(xs[0])  # type: ignore[arg-type]
    hist = np.concatenate([r._history for r in rs], axis=1)  # type: ignore[misc]
    new = np.concatenate(xs, axis=1)
    buf = np.concatenate([hist, new], axis=0, dtype=np.float64)
    rel_in = r0._n_in - r0._buf_start + n_x
    rel_end = ((rel_in - 1) * r0.up) // r0.down + 1
    rel_out = r0._n_out - r0._buf_start * r0.up // r0.down
    blocks = _polyphase_blocks(r0.h, r0.up, r0.down, n_hist + n_x, rel_out, rel_end)
    y = _banded_product(blocks, buf, rel_end - rel_out).astype(np.float32)
    new_rel = ((rel_in - (r0.taps - 1)) // r0.down) * r0.down
    history = buf[new_rel:]
    for j, r in enumerate(rs):
        r._history = history[:, j * width : (j + 1) * width]
        n_total = r._n_in + n_x
        r._n_out = ((n_total - 1) * r.up) // r.down + 1
        r._buf_start += new_rel
        r._n_in = n_total
    return y


_BLOCKS: dict = {}
#: output rows per block of the banded resampling product
_BAND_ROWS = 5


def _polyphase_blocks(
    h: np.ndarray, up: int, down: int, n_in: int, first: int, end: int
) -> list[tuple[int, int, int, int, np.ndarray]]:
    """``M`` with ``M @ x == upfirdn(h, x, up, down)[first:end]`` for ``x`` of ``n_in`` rows, cut
    into bands: ``(r0, r1, c0, c1, M[r0:r1, c0:c1])`` holding every nonzero of rows ``r0:r1``.

    ``upfirdn`` output ``n`` is ``sum_i x[i] * h[n * down - i * up]``, so each output depends on
    about ``len(h) / up`` consecutive inputs; a few small dense products over the bands are
    faster than ``upfirdn`` on the thousands of columns of a batch, and than one product with
    the whole, mostly zero, matrix. Cached per shape.
    """
    key = (h.tobytes(), up, down, n_in, first, end)
    blocks = _BLOCKS.get(key)
    if blocks is None:
        n = np.arange(first, end)[:, None]
        tap = n * down - np.arange(n_in)[None, :] * up
        valid = (tap >= 0) & (tap < len(h))
        m = np.where(valid, h[np.clip(tap, 0, len(h) - 1)], 0.0)
        blocks = []
        for r0 in range(0, len(m), _BAND_ROWS):
            band = m[r0 : r0 + _BAND_ROWS]
            nz = np.flatnonzero(band.any(axis=0))
            c0, c1 = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0)
            blocks.append((r0, r0 + len(band), c0, c1, np.ascontiguousarray(band[:, c0:c1])))
        if len(_BLOCKS) > 256:
            _BLOCKS.clear()
        _BLOCKS[key] = blocks
    return blocks


def _banded_product(
    blocks: list[tuple[int, int, int, int, np.ndarray]], x: np.ndarray, rows: int
) -> np.ndarray:
    """``M @ x`` for ``M`` given as bands by :func:`_polyphase_blocks`."""
    y = np.empty((rows, x.shape[1]))
    for r0, r1, c0, c1, band in blocks:
        np.matmul(band, x[c0:c1], out=y[r0:r1])
    return y


def _bandpass_many(bps: list[CausalBandpass], ys: list[np.ndarray]) -> list[np.ndarray]:
    out: list = [None] * len(bps)
    keys = []
    for i, (bp, y) in enumerate(zip(bps, ys, strict=True)):
        if bp.sos is None or bp._zi is None or len(y) == 0:
            out[i] = bp.process(y)
            keys.append(None)
        else:
            keys.append((bp.group_key, len(y), y.shape[1]))
    for key, idx in _groups(keys).items():
        if key is not None:
            x = np.concatenate([ys[i] for i in idx], axis=1)
            y = _bandpass_group([bps[i] for i in idx], x)
            _split(y, idx, ys[idx[0]].shape[1], out)
    return out


def _bandpass_group(bps: list[CausalBandpass], x: np.ndarray) -> np.ndarray:
    """Band-pass streams with the same filter side by side: ``x`` ``(n, columns)`` holds their
    equally wide inputs; returns float32 output and advances each filter's state."""
    width = x.shape[1] // len(bps)
    zi = np.concatenate([bp._zi for bp in bps], axis=1)  # type: ignore[misc]
    y, zf = sps.sosfilt(bps[0].sos, x.astype(np.float64), axis=0, zi=zi.transpose(0, 2, 1))
    zf = zf.transpose(0, 2, 1)  # (sections, columns, 2)
    for j, bp in enumerate(bps):
        bp._zi = zf[:, j * width : (j + 1) * width, :]
    return y.astype(np.float32)
