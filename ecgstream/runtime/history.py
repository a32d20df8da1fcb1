"""The patient's own history: a per-stream bank of recent normal envelope snippets.

A model file whose spec has a ``history`` section (:class:`HistoryConfig`) scores every window
also against the stream's own past: each segment's *snippet* (the envelope from ``before_s``
before the segment's centre to ``after_s`` after it: the beat and the one or two before it, so
their shape and spacing) is compared with a bank of such snippets from the stream's recent
windows, and the *term* is the squared distance to the nearest one over the two snippets'
energy (0: the patient has looked like this before; about 1: never). The calibrated scores
become

- point score + ``weight`` x term (each segment's term at its centre, interpolated to every
  sample of the window, averaged over overlapping windows as point scores are);
- window score + ``weight`` x the mean of the ``topk_frac`` highest segment terms of the window
  (so a window that abnormal beats dominate scores high against the patient's history even
  when its own consensus is made of them).

Causality: a window's term uses banks filled only from windows that END at or before the
window's start, of the same buffer generation, whose calibrated window score *before* the term
is below ``gate`` (the quality gate); only each such window's new part (its last hop) enters,
every ``bank_every``-th segment, and the bank keeps the last ``bank_s`` seconds of windows. The
term is 0 until the bank holds ``min_entries`` snippets (about the first 25 s of a stream), and
for segments whose snippet reaches before the window's start when the window one hop earlier
was not scored (a stream's first window, after a gap). A new buffer generation (a gap, a
restart) starts the history afresh; so does a new worker after a rebalance.

The same :class:`History` serves ``ecgstream score`` (:meth:`Scorer.score_signal
<ecgstream.runtime.scorer.Scorer.score_signal>`, one stream, every window in order) and the
stream stepper (:class:`~ecgstream.runtime.stepping.history.HistoryStepper`), so offline and
streaming scores agree. Lengths are in samples at the model rate unless said otherwise; the
envelope is the rectified preprocessed signal averaged over blocks of ``envelope_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "HistoryConfig",
    "HistoryState",
    "History",
    "HISTORY_FORMAT",
    "envelope",
    "snippets",
    "relative_distances",
    "nearest_term",
    "top_mean",
]

#: version of :class:`HistoryState`'s layout (a stream state of another one is refused)
HISTORY_FORMAT = 1

_Num = Annotated[float, Field(strict=True, allow_inf_nan=False)]
_Int = Annotated[int, Field(strict=True)]


class HistoryConfig(BaseModel):
    """The ``history`` section of a model spec (seconds unless said otherwise).

    ``gate`` is in calibrated window-score units of the model's own (pre-term) score: windows
    scoring at or above it do not enter the bank. ``weight`` multiplies the term (calibrated
    units per unit of term).
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["snippets"] = "snippets"
    weight: _Num = Field(ge=0)
    gate: _Num
    bank_s: _Num = Field(120.0, gt=0, le=3600)
    min_entries: _Int = Field(50, ge=1)
    before_s: _Num = Field(1.2, ge=0, le=60)
    after_s: _Num = Field(0.3, ge=0, le=60)
    envelope_s: _Num = Field(0.05, gt=0, le=1)
    segment_s: _Num = Field(0.8, gt=0, le=60)
    stride_s: _Num = Field(0.1, gt=0, le=60)
    bank_every: _Int = Field(2, ge=1)
    topk_frac: _Num = Field(0.1, gt=0, le=1)


# ---------------------------------------------------------------- small pure functions


def envelope(x: np.ndarray, block: int) -> np.ndarray:
    """Rectified signal ``(..., n)`` averaged over blocks of ``block`` samples ->
    ``(..., n // block)`` (float64)."""
    n = x.shape[-1] // block * block
    return np.abs(x[..., :n], dtype=np.float64).reshape(*x.shape[:-1], -1, block).mean(-1)


def snippets(env: np.ndarray, centres: np.ndarray, before: int, after: int) -> np.ndarray:
    """Snippets ``(..., len(centres), before + after)`` of an envelope ``(..., m)``: from
    ``before`` samples before each centre (envelope samples) to ``after`` samples after it."""
    idx = centres[:, None] + np.arange(-before, after)[None]
    return env[..., idx]


def relative_distances(snips: np.ndarray, bank: np.ndarray, bank_sq: np.ndarray) -> np.ndarray:
    """Each snippet's squared distance to every bank row, over the two snippets' energy.

    ``snips`` ``(b, n, L)``, ``bank`` ``(b, m, L)`` (one bank per row of the batch) and its
    rows' mean squares ``bank_sq`` ``(b, m)`` (``inf`` marks an empty row) -> ``(b, n, m)``
    float32: ``mean((a - b_j)^2) / (mean(a^2) + mean(b_j^2) + 1e-4)``, ``inf`` at empty rows,
    as one matrix product (in place: the ``(b, n, m)`` array is the cost).
    """
    a = np.asarray(snips, np.float32)
    length = a.shape[-1]
    a_sq = (a * a).mean(-1)  # (b, n)
    full = np.isfinite(bank_sq)
    b_sq = np.where(full, bank_sq, 0.0).astype(np.float32)
    rel = np.matmul(a, bank.transpose(0, 2, 1))  # (b, n, m): the cross products
    rel *= np.float32(-2.0 / length)
    den = a_sq[..., None] + b_sq[:, None, :]
    rel += den
    np.maximum(rel, 0.0, out=rel)
    den += np.float32(1e-4)
    rel /= den
    if not full.all():
        rel[np.broadcast_to(~full[:, None, :], rel.shape)] = np.inf
    return rel


def nearest_term(snips: np.ndarray, bank: np.ndarray, bank_sq: np.ndarray) -> np.ndarray:
    """Each snippet's :func:`relative_distances` to its nearest bank row ``(b, n)``."""
    return relative_distances(snips, bank, bank_sq).min(-1).astype(np.float64)


def top_mean(values: np.ndarray, frac: float) -> np.ndarray:
    """Mean of the ``frac`` highest values along the last axis (at least one)."""
    k = max(1, int(round(frac * values.shape[-1])))
    return np.partition(values, values.shape[-1] - k, axis=-1)[..., -k:].mean(-1)


# ---------------------------------------------------------------- per-stream state


@dataclass
class HistoryState:
    """One stream's history: ``bank`` ``(leads, slots * per_window, L)`` float32 snippets in a
    ring of ``slots`` windows (``bank_sq`` their mean squares, ``inf`` where empty), ``filled``
    windows stored so far, ``pending`` gated windows not yet past (their end, snippets), the
    envelope ``tail`` of the last window scored (generation, start, envelope) and the buffer
    ``generation`` the history belongs to. ``stepper`` names the stepper that made it."""

    stepper: str
    bank: np.ndarray
    bank_sq: np.ndarray
    filled: int = 0
    pending: list[tuple[int, np.ndarray]] = field(default_factory=list)
    tail: tuple[int, int, np.ndarray] | None = None
    generation: int | None = None

    @property
    def entries(self) -> int:
        """Snippets in the bank (per lead)."""
        return int(np.isfinite(self.bank_sq[0]).sum())

    def restart(self, generation: int) -> None:
        """Forget everything: a new buffer generation (a gap, a restart)."""
        self.bank_sq.fill(np.inf)
        self.filled = 0
        self.pending = []
        self.tail = None
        self.generation = generation


class History:
    """The history term of a model (see the module docstring): geometry from the spec's
    window, hop, rate and ``history`` section; :meth:`advance` walks windows in stream order."""

    def __init__(self, cfg: HistoryConfig, window: int, hop: int, fs: float, leads: int):
        self.cfg = cfg
        self.window, self.hop, self.leads = window, hop, leads
        self.block = int(round(cfg.envelope_s * fs))
        seg, stride = int(round(cfg.segment_s * fs)), int(round(cfg.stride_s * fs))
        self.before = int(round(cfg.before_s / cfg.envelope_s))
        self.after = int(round(cfg.after_s / cfg.envelope_s))
        problems = []
        if self.block < 1 or hop % self.block or window % self.block:
            problems.append(
                f"envelope_s {cfg.envelope_s:g} s must be a whole number of samples dividing "
                f"the hop ({hop}) and the window ({window}) at {fs:g} Hz"
            )
        if seg < 1 or stride < 1 or seg > window:
            problems.append(f"segment_s / stride_s do not fit a window of {window} samples")
        if self.before + self.after < 1:
            problems.append("before_s + after_s must hold at least one envelope sample")
        if problems:
            raise ValueError("; ".join(problems))
        n_seg = (window - seg) // stride + 1
        #: segment centres in the window (model samples) and on its envelope
        self.centres = np.arange(n_seg) * stride + seg // 2
        self.c_env = self.centres // self.block
        env_len = window // self.block
        if int(self.c_env[-1]) + self.after > env_len:
            raise ValueError(f"after_s {cfg.after_s:g} s reaches past the window's end")
        #: envelope samples a window needs from before its start (from the previous window)
        self.need = max(0, self.before - int(self.c_env[0]))
        if self.need > hop // self.block:
            raise ValueError(f"before_s {cfg.before_s:g} s reaches back past the previous window")
        self.inside = self.c_env - self.before >= 0  # snippets within the window itself
        new = np.flatnonzero(self.centres >= window - hop)[:: cfg.bank_every]
        if not self.inside[new].all():
            raise ValueError(
                f"before_s {cfg.before_s:g} s reaches before the window from a segment of its "
                f"last hop (the snippets that enter the bank must lie in their window)"
            )
        self.new = new
        self.slots = max(1, int(round(cfg.bank_s / (hop / fs))))
        self.per_window = len(new)
        self.length = self.before + self.after
        self.top = cfg.topk_frac
        #: ``(segments, window)``: the weights of linear interpolation between the centres
        self.interp = np.stack(
            [np.interp(np.arange(window), self.centres, e) for e in np.eye(n_seg)]
        )

    # ---------------------------------------------------------------- state

    def new_state(self, stepper: str) -> HistoryState:
        rows = self.slots * self.per_window
        return HistoryState(
            stepper,
            np.zeros((self.leads, rows, self.length), np.float32),
            np.full((self.leads, rows), np.inf),
        )

    @property
    def state_bytes(self) -> int:
        """Bytes of one stream's bank (snippets and their mean squares)."""
        rows = self.slots * self.per_window
        return self.leads * rows * (self.length * 4 + 8)

    # ---------------------------------------------------------------- the walk

    def advance(
        self,
        states: list[HistoryState],
        generations: list[int],
        starts: list[np.ndarray],
        windows: np.ndarray,
        window_cal: np.ndarray,
    ) -> np.ndarray:
        """Terms ``(n, segments)`` of a batch's windows, and the streams' states past them.

        ``states[p]`` is stream ``p``'s history, its windows the next ``len(starts[p])`` rows
        of ``windows`` ``(n, leads, window)`` (preprocessed, stream order), starting at
        ``starts[p]`` (absolute model samples) in buffer generation ``generations[p]``;
        ``window_cal`` ``(n,)`` their calibrated window scores before the term (the gate). A
        window sees the snippets of every earlier gated window that ends at or before its
        start, this batch's included.
        """
        n = len(windows)
        n_seg = len(self.centres)
        terms = np.zeros((n, n_seg))
        if n == 0:
            return terms
        env = envelope(windows, self.block)  # (n, leads, m)
        counts = [len(s) for s in starts]
        first = np.cumsum([0, *counts[:-1]])
        # each window's envelope with the ``need`` samples before it, from the previous window
        # (this batch's, or the state's tail); segments reaching into a missing stretch: no term
        ext = np.concatenate([np.zeros((n, self.leads, self.need)), env], axis=2)
        has_prev = np.zeros(n, bool)
        k_hop = self.hop // self.block
        for p, state in enumerate(states):
            if state.generation != generations[p]:
                state.restart(generations[p])
            row, s = int(first[p]), starts[p]
            tail = state.tail
            if tail is not None and tail[0] == generations[p] and tail[1] + self.hop == s[0]:
                ext[row, :, : self.need] = tail[2][:, k_hop - self.need : k_hop]
                has_prev[row] = True
            follows = np.flatnonzero(np.diff(s) == self.hop) + 1
            if len(follows) and self.need:
                prev = env[row + follows - 1][:, :, k_hop - self.need : k_hop]
                ext[row + follows, :, : self.need] = prev
                has_prev[row + follows] = True
            last = row + counts[p] - 1
            state.tail = (generations[p], int(s[-1]), env[last].copy())
        snips = snippets(ext, self.c_env + self.need, self.before, self.after)  # (n, L, seg, len)
        ok = self.inside[None] | has_prev[:, None]  # (n, seg)
        gated = window_cal < self.cfg.gate
        # rounds: the r-th window of every stream at once (a stream's windows in order)
        for r in range(max(counts)):
            ps = [p for p in range(len(states)) if counts[p] > r]
            rows = np.array([int(first[p]) + r for p in ps])
            ready = []
            for p, row in zip(ps, rows, strict=True):
                state, start = states[p], int(starts[p][r])
                self._mature(state, start)
                if state.entries >= self.cfg.min_entries:
                    ready.append((state, row))
            if ready:
                rr = np.array([row for _, row in ready])
                banks = np.stack([st.bank for st, _ in ready])  # (b, leads, m, L)
                sq = np.stack([st.bank_sq for st, _ in ready])
                b, leads = banks.shape[:2]
                flat = snips[rr].reshape(b * leads, n_seg, self.length)
                near = nearest_term(
                    flat, banks.reshape(b * leads, -1, self.length), sq.reshape(b * leads, -1)
                )
                terms[rr] = near.reshape(b, leads, n_seg).mean(1) * ok[rr]
            for p, row in zip(ps, rows, strict=True):
                if gated[row]:
                    end = int(starts[p][r]) + self.window
                    states[p].pending.append((end, snips[row][:, self.new].astype(np.float32)))
        return terms

    def _mature(self, state: HistoryState, start: int) -> None:
        """Move the pending windows that end at or before ``start`` into the bank."""
        keep = []
        for end, snip in state.pending:
            if end > start:
                keep.append((end, snip))
                continue
            slot = state.filled % self.slots
            rows = slice(slot * self.per_window, (slot + 1) * self.per_window)
            state.bank[:, rows] = snip
            state.bank_sq[:, rows] = (snip.astype(np.float64) ** 2).mean(-1)
            state.filled += 1
        state.pending = keep

    # ---------------------------------------------------------------- scores

    def apply(
        self, point_raw: np.ndarray, window_raw: np.ndarray, terms: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores plus ``weight`` x the terms (``scale``: the spec's score scale, so the
        calibrated scores move by ``weight`` x term): the segment terms interpolated over the
        window's samples for the point scores, the mean of the top ``topk_frac`` for the
        window score."""
        w = self.cfg.weight * scale
        point = (point_raw + w * self.point_terms(terms)).astype(point_raw.dtype)
        window = (window_raw + w * top_mean(terms, self.top)).astype(window_raw.dtype)
        return point, window

    def point_terms(self, terms: np.ndarray) -> np.ndarray:
        """Segment terms ``(n, segments)`` interpolated linearly between the segment centres
        to every window sample ``(n, window)`` (held flat before the first and after the last)."""
        return terms @ self.interp
