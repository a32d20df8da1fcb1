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

__all__ = [
    "Unprocessable",
    "StreamBuffer",
    "StreamEvent",
    "Windows",
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
        self.next_seq = -1
        self.t_next = 0.0  # time (s) the next chunk should start at
        self.n_in = 0  # input samples since the preprocessor (re)started
        self.t_start = 0.0  # t0 of the first chunk since the (re)start
        self.a_origin = 0  # absolute model-rate index of the preprocessor's first output
        self.buf = np.zeros((0, len(spec.leads)), np.float32)
        self.buf_a0 = 0  # absolute index of buf[0]
        self.anchor: int | None = None  # absolute model-rate index of the stream start
        self.next_k = 0  # next window (counted from the stream start) to emit
        self.bad: list[tuple[int, int]] = []  # absolute model-rate ranges not to score
        self.chunks: deque[tuple[int, int]] = deque()  # (absolute start, offset) not yet released
        self.last_seen = 0.0  # wall clock of the last chunk (for idle eviction)
        self.last_value: np.ndarray | None = None
        self.pending: list[np.ndarray] = []  # accepted input not yet preprocessed
        self._all_leads = False  # lead_idx selects every input lead in order
        pcfg = spec.preprocess_config
        self.min_fs = 2.0 * (pcfg.lowpass_hz or pcfg.fs / 2)  # lowest usable input rate, Hz

    # ---------------------------------------------------------------- input

    def _map_leads(self, chunk: Chunk) -> None:
        key = tuple(chunk.leads)
        if key == self.leads_in:
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
        self.leads_in = key
        self._all_leads = self.lead_idx == list(range(len(key)))

    def _restart(self, chunk: Chunk) -> None:
        self.flush()
        self.pre = new_preprocessor(self.spec.preprocess_config, chunk.fs, len(self.spec.leads))
        self.fs_in = chunk.fs
        self.t_start = chunk.t0
        self.n_in = 0
        self.a_origin = int(round(chunk.t0 * self.fs))
        self.buf = np.zeros((0, len(self.spec.leads)), np.float32)
        self.buf_a0 = self.a_origin
        self.next_k = max(self.next_k, -(-(self.a_origin - self.anchor) // self.hop))
        self.last_value = None

    def accept(
        self, chunk: Chunk, offset: int | None = None, now: float = 0.0, defer: bool = False
    ) -> list[StreamEvent]:
        """Feed one chunk; returns stream events (duplicates are dropped, gaps restart filters).

        With ``defer`` the samples wait in :attr:`pending` until :meth:`flush` or
        :func:`preprocess_pending` (which batches many streams). Raises :class:`LeadMismatch`
        when the chunk's leads cannot feed the model.
        """
        self._map_leads(chunk)
        if not MIN_FS <= chunk.fs <= MAX_FS:
            raise Unprocessable(
                f"sampling rate {chunk.fs:.6g} Hz outside [{MIN_FS:g}, {MAX_FS:g}]", "bad_fs"
            )
        min_fs = self.min_fs
        if chunk.fs < min_fs:  # also bounds the work: upsampling 0.01 Hz would make GBs of samples
            raise Unprocessable(
                f"sampling rate {chunk.fs:g} Hz is below {min_fs:g} Hz, twice the upper band edge "
                f"of model {self.spec.name}",
                "unsupported_rate",
            )
        if (
            chunk.samples.ndim != 2
            or chunk.samples.shape[1] != len(chunk.leads)
            or not len(chunk.samples)
        ):
            raise Unprocessable(
                f"samples of shape {chunk.samples.shape} for {len(chunk.leads)} leads",
                "bad_samples",
            )
        if not math.isfinite(chunk.t0) or not math.isfinite(chunk.seq * chunk.duration_s):
            raise Unprocessable("t0 and seq must give a finite stream start", "bad_t0")
        events: list[StreamEvent] = []
        self.last_seen = now
        if self.pre is None:
            self.anchor = int(round((chunk.t0 - chunk.seq * chunk.duration_s) * self.fs))
            self._restart(chunk)
        else:
            if chunk.seq < self.next_seq:
                return [
                    StreamEvent(
                        "duplicate", chunk.t0, chunk.t0 + chunk.duration_s, f"seq {chunk.seq}"
                    )
                ]
            skew = chunk.t0 - self.t_next
            if chunk.fs != self.fs_in:
                events.append(
                    StreamEvent(
                        "reset", chunk.t0, chunk.t0, f"rate {self.fs_in:g} -> {chunk.fs:g} Hz"
                    )
                )
                self._restart(chunk)
            elif chunk.seq > self.next_seq or abs(skew) > self.max_skew_s:
                if skew < -self.max_skew_s:
                    # overlaps what we already have: treat as a duplicate of that time span
                    return [
                        StreamEvent("duplicate", chunk.t0, self.t_next, f"seq {chunk.seq} overlaps")
                    ]
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
        self.next_seq = chunk.seq + 1
        x = chunk.samples if self._all_leads else chunk.samples[:, self.lead_idx]
        x = self._fill_missing(x)
        a_chunk = self.a_origin + int(math.floor(self.n_in * self.fs / self.fs_in + 1e-9))
        if offset is not None:
            self.chunks.append((a_chunk, offset))
        self.n_in += len(x)
        self.t_next = self.t_start + self.n_in / self.fs_in
        self.pending.append(x)
        if not defer:
            self.flush()
        return events

    def flush(self) -> None:
        """Preprocess the pending input of this stream alone."""
        for x in self.pending:
            self.extend(self.pre.process(x))  # type: ignore[union-attr]
        self.pending.clear()

    def extend(self, y: np.ndarray) -> None:
        """Append preprocessed samples (model rate)."""
        self.buf = np.concatenate([self.buf, y]) if len(self.buf) else y

    def _fill_missing(self, x: np.ndarray) -> np.ndarray:
        """Replace NaN (missing) samples by the lead's last valid value, so filters stay finite."""
        nan = np.isnan(x)
        if nan.any():
            x = x.copy()
            for lead in np.flatnonzero(nan.any(axis=0)):
                col, bad = x[:, lead], nan[:, lead]
                valid = np.flatnonzero(~bad)
                prev = self.last_value[lead] if self.last_value is not None else 0.0
                if len(valid) == 0:
                    col[:] = prev
                    continue
                fill_idx = np.maximum.accumulate(np.where(bad, -1, np.arange(len(col))))
                first = valid[0]
                col[:first] = prev
                col[first:] = col[fill_idx[first:]]
        if len(x):
            self.last_value = x[-1].copy()
        return x

    def mark_bad(self, start_s: float, end_s: float) -> None:
        """Do not score windows overlapping ``[start_s, end_s)`` (a technical condition)."""
        pad = int(math.ceil((self.pre.delay_s if self.pre else 0.0) * self.fs)) + 1
        self.bad.append((int(math.floor(start_s * self.fs)), int(math.ceil(end_s * self.fs)) + pad))

    # ---------------------------------------------------------------- output

    @property
    def a_end(self) -> int:
        """Absolute index one past the last preprocessed sample."""
        return self.buf_a0 + len(self.buf)

    def take_windows(self) -> tuple[Windows, np.ndarray]:
        """Complete windows not yet emitted, and the start samples of suppressed ones (bad spans).

        Samples no later window needs are dropped from the buffer.
        """
        if self.pending:
            self.flush()
        w, h = self.window, self.hop
        base = self.anchor or 0
        k_last = (self.a_end - w - base) // h  # last window that is complete
        starts = [base + k * h for k in range(self.next_k, k_last + 1)]
        suppressed: list[int] = []
        if starts and self.bad:
            keep = [a for a in starts if not any(a < b and a + w > lo for lo, b in self.bad)]
            suppressed = [a for a in starts if a not in keep]
            starts = keep
        if len(starts) == 1:
            r = starts[0] - self.buf_a0
            data = self.buf[r : r + w].T[None]
        elif starts:
            data = np.stack([self.buf[a - self.buf_a0 : a - self.buf_a0 + w].T for a in starts])
        else:
            data = _EMPTY.get(self.buf.shape[1], w)
        if k_last >= self.next_k:
            self.next_k = k_last + 1
        keep_from = base + self.next_k * h
        drop = min(keep_from - self.buf_a0, len(self.buf))
        if drop > 0:
            self.buf = self.buf[drop:]
            self.buf_a0 += drop
        if self.bad:
            self.bad = [(lo, b) for lo, b in self.bad if b > keep_from]
        return Windows(self.stream, np.array(starts, np.int64), data), np.array(
            suppressed, np.int64
        )

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
        need = (self.anchor or 0) + self.next_k * self.hop
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
        ys = preprocess_many([b.pre for b in active], [b.pending.pop(0) for b in active])
        for b, y in zip(active, ys, strict=True):
            b.extend(y)


def preprocess_many(pres: list[Preprocessor], xs: list[np.ndarray]) -> list[np.ndarray]:
    """``[p.process(x) for p, x in zip(pres, xs)]``, computed in as few numpy calls as possible.

    Streams whose filter state has the same shape (same rates, chunk length and phase, the
    usual case) are stacked side by side, so one ``upfirdn`` and one ``sosfilt`` call serve
    them all. Filters act on each column independently, so the result equals the per-stream
    result; each :class:`Preprocessor` keeps its own state.
    """
    ys = _resample_many([p.resampler for p in pres], xs)
    return _bandpass_many([p.bandpass for p in pres], ys)


def _groups(keys: list) -> dict:
    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return groups


def _resample_many(rs: list[StreamingResampler], xs: list[np.ndarray]) -> list[np.ndarray]:
    out: list = [None] * len(rs)
    keys = []
    for i, (r, x) in enumerate(zip(rs, xs, strict=True)):
        if r.identity or r._history is None or len(x) == 0:
            out[i] = r.process(x)
            keys.append(None)
        else:
            # everything upfirdn does depends only on these (see StreamingResampler.process)
            offset = r._buf_start * r.up // r.down
            keys.append(
                (
                    r.up,
                    r.down,
                    len(r.h),
                    r._n_in - r._buf_start,
                    r._n_out - offset,
                    len(x),
                    x.shape[1],
                )
            )
    for key, idx in _groups(keys).items():
        if key is None:
            continue
        r0 = rs[idx[0]]
        width = xs[idx[0]].shape[1]
        n_hist, n_x = len(r0._history), len(xs[idx[0]])
        hist = np.concatenate([rs[i]._history for i in idx], axis=1)
        new = np.concatenate([xs[i] for i in idx], axis=1)
        buf = np.concatenate([hist, new], axis=0, dtype=np.float64)
        rel_in = r0._n_in - r0._buf_start + n_x
        rel_end = ((rel_in - 1) * r0.up) // r0.down + 1
        rel_out = r0._n_out - r0._buf_start * r0.up // r0.down
        # the rows rel_out:rel_end of upfirdn(h, buf, up, down), as one matrix product
        y = (_polyphase_matrix(r0.h, r0.up, r0.down, n_hist + n_x, rel_out, rel_end) @ buf).astype(
            np.float32
        )
        new_rel = ((rel_in - (r0.taps - 1)) // r0.down) * r0.down
        for j, i in enumerate(idx):
            r = rs[i]
            cols = slice(j * width, (j + 1) * width)
            out[i] = y[:, cols]
            r._history = buf[new_rel:, cols]
            n_total = r._n_in + len(xs[i])
            r._n_out = ((n_total - 1) * r.up) // r.down + 1
            r._buf_start += new_rel
            r._n_in = n_total
    return out


_MATRICES: dict = {}


def _polyphase_matrix(
    h: np.ndarray, up: int, down: int, n_in: int, first: int, end: int
) -> np.ndarray:
    """``M`` with ``M @ x == upfirdn(h, x, up, down)[first:end]`` for ``x`` of ``n_in`` rows.

    ``upfirdn`` output ``n`` is ``sum_i x[i] * h[n * down - i * up]``; a dense product is several
    times faster than ``upfirdn`` on the thousands of columns of a batch. Cached per shape.
    """
    key = (h.tobytes(), up, down, n_in, first, end)
    m = _MATRICES.get(key)
    if m is None:
        n = np.arange(first, end)[:, None]
        tap = n * down - np.arange(n_in)[None, :] * up
        valid = (tap >= 0) & (tap < len(h))
        m = np.where(valid, h[np.clip(tap, 0, len(h) - 1)], 0.0)
        if len(_MATRICES) > 256:
            _MATRICES.clear()
        _MATRICES[key] = m
    return m


def _bandpass_many(bps: list[CausalBandpass], ys: list[np.ndarray]) -> list[np.ndarray]:
    out: list = [None] * len(bps)
    keys = []
    for i, (bp, y) in enumerate(zip(bps, ys, strict=True)):
        if bp.sos is None or bp._zi is None or len(y) == 0:
            out[i] = bp.process(y)
            keys.append(None)
        else:
            keys.append((bp.sos.shape, bp.sos.tobytes(), len(y), y.shape[1]))
    for key, idx in _groups(keys).items():
        if key is None:
            continue
        width = ys[idx[0]].shape[1]
        x = np.concatenate([ys[i] for i in idx], axis=1, dtype=np.float64)
        zi = np.concatenate([bps[i]._zi for i in idx], axis=1).transpose(
            0, 2, 1
        )  # (sections, 2, cols)
        y, zf = sps.sosfilt(bps[idx[0]].sos, x, axis=0, zi=zi)
        y = y.astype(np.float32)
        zf = zf.transpose(0, 2, 1)
        for j, i in enumerate(idx):
            cols = slice(j * width, (j + 1) * width)
            out[i] = y[:, cols]
            bps[i]._zi = zf[:, cols, :]
    return out
