"""A bank of per-stream preprocessors, run side by side across streams.

The streaming worker keeps one :class:`StreamFilter` per stream: its
:class:`~ecgstream.signals.preprocess.Preprocessor` (resampler and band-pass state) and the last
input sample, with which missing (NaN) samples are filled so the filters stay finite.
:func:`process_many` runs the filters of many streams at once: streams whose filter state has
the same shape (same rates, chunk length and phase, the usual case) are stacked side by side,
so one resampling product and one ``sosfilt`` call serve them all, with the same output as
each stream's own :meth:`StreamFilter.process`. This module is the companion of
:mod:`ecgstream.signals.preprocess` and advances the state of its filters.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
from scipy import signal as sps

from ecgstream.signals.preprocess import (
    CausalBandpass,
    PreprocessConfig,
    Preprocessor,
    StreamingResampler,
)

__all__ = ["StreamFilter", "new_preprocessor", "process_many", "preprocess_many"]


@functools.lru_cache(maxsize=64)
def _template(cfg: PreprocessConfig, fs_in: float, n_leads: int) -> Preprocessor:
    return Preprocessor(cfg, fs_in, n_leads)


def new_preprocessor(cfg: PreprocessConfig, fs_in: float, n_leads: int) -> Preprocessor:
    """A fresh :class:`Preprocessor`, copied from a cached one (filter design costs ~1 ms)."""
    return copy.deepcopy(_template(cfg, fs_in, n_leads))


class StreamFilter:
    """One stream's preprocessing state: ``pre`` (resampler and band-pass) and the last input
    sample, for filling missing samples. ``delay_s`` is the filters' delay (seconds)."""

    def __init__(self, cfg: PreprocessConfig, fs_in: float, n_leads: int):
        self.pre = new_preprocessor(cfg, fs_in, n_leads)
        self.delay_s = self.pre.delay_s
        self._last_x: np.ndarray | None = None  # the last input preprocessed (NaN filled)

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

    def process(self, x: np.ndarray, has_nan: bool | None = None) -> np.ndarray:
        """Preprocess the next input ``x`` ``(n, leads)`` at the source rate; returns model-rate
        samples. ``has_nan`` None: checked here."""
        has_nan = bool(np.isnan(x).any()) if has_nan is None else has_nan
        return self.pre.process(self.fill_missing(x, has_nan))


def process_many(
    filters: list[StreamFilter], xs: list[np.ndarray], has_nan: list[bool | None]
) -> list[np.ndarray]:
    """``[f.process(x, n) for f, x, n in zip(filters, xs, has_nan)]``, the streams side by side
    (see :func:`preprocess_many`); ``has_nan`` None entries are checked in one pass."""
    xs = list(xs)
    with_nan = [i for i, n in enumerate(has_nan) if n]
    unchecked = [i for i, n in enumerate(has_nan) if n is None]
    if unchecked:
        with_nan += [unchecked[k] for k in _with_nan([xs[i] for i in unchecked])]
    for i in with_nan:
        xs[i] = filters[i].fill_missing(xs[i], True)
    for f, x in zip(filters, xs, strict=True):
        if len(x):
            f._last_x = x
    return preprocess_many([f.pre for f in filters], xs)


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
