"""The bank of per-stream preprocessors: streams run side by side give each stream's own output."""

from __future__ import annotations

import numpy as np
import pytest

from ecgstream.signals.bank import (
    StreamFilter,
    _banded_product,
    _polyphase_blocks,
    preprocess_many,
    process_many,
)
from ecgstream.signals.preprocess import PreprocessConfig, Preprocessor

CFG = PreprocessConfig(fs=100.0)


def _signal(n, leads=2, seed=0):
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(0, 0.05, size=(n, leads)), axis=0).astype(np.float32)


@pytest.mark.parametrize("up,down", [(5, 18), (1, 5), (5, 2), (4, 3)])
def test_banded_resampling_product_equals_upfirdn(up, down):
    from scipy import signal as sps

    h = np.random.default_rng(1).normal(size=20 * max(up, down) + 1)
    x = np.random.default_rng(2).normal(size=(400, 7))
    full = sps.upfirdn(h, x, up, down, axis=0)
    for first, end in [(0, 50), (37, 80), (60, 61)]:
        blocks = _polyphase_blocks(h, up, down, len(x), first, end)
        np.testing.assert_allclose(
            _banded_product(blocks, x, end - first), full[first:end], atol=1e-12
        )


def test_streams_side_by_side_equal_each_stream_alone():
    """Streams of three rates and two chunk lengths, run through one bank call per step, give
    the output of their own preprocessor fed the same chunks, and keep their own state."""
    rates = [360.0, 360.0, 500.0, 100.0, 360.0, 500.0]
    lengths = [360, 360, 500, 100, 180, 500]  # stream 4: half-second chunks, another phase
    signals = [_signal(int(fs) * 8, seed=s) for s, fs in enumerate(rates)]
    bank = [Preprocessor(CFG, fs, 2) for fs in rates]
    alone = [Preprocessor(CFG, fs, 2) for fs in rates]
    for step in range(8):
        xs = [x[step * n : (step + 1) * n] for x, n in zip(signals, lengths, strict=True)]
        got = preprocess_many(bank, xs)
        for p, x, y in zip(alone, xs, got, strict=True):
            np.testing.assert_allclose(y, p.process(x), atol=1e-6)
            assert y.dtype == np.float32


def test_missing_samples_are_filled_from_the_streams_last_value():
    """NaN samples (checked here or flagged by the caller) are filled with the lead's last
    valid value before filtering: the output is finite and equals filtering the filled input."""
    x = _signal(720 * 3, seed=4)
    holed = x.copy()
    holed[720 : 720 + 30, 0] = np.nan  # a chunk starting with missing samples
    holed[1440:, 1] = np.nan  # a whole chunk of one lead
    filled = holed.copy()
    filled[720 : 720 + 30, 0] = x[719, 0]
    filled[1440:, 1] = x[1439, 1]
    filters = [StreamFilter(CFG, 360.0, 2), StreamFilter(CFG, 360.0, 2)]
    reference = Preprocessor(CFG, 360.0, 2)
    for k, has_nan in enumerate([False, None, True]):
        chunk = slice(720 * k, 720 * (k + 1))
        ys = process_many(filters, [holed[chunk], x[chunk]], [has_nan, False])
        assert np.isfinite(ys[0]).all()
        np.testing.assert_allclose(ys[0], reference.process(filled[chunk]), atol=1e-6)
    np.testing.assert_allclose(filters[0].last_value, filled[-1])
