"""Fixed windows and mapping window scores back to the record's time axis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecgstream.signals.windows import frame, overlap_average, to_record_rate, window_starts


@settings(deadline=None)
@given(n=st.integers(0, 3000), window=st.integers(1, 500), hop_frac=st.floats(0.01, 1.0))
def test_window_starts_cover_every_sample(n, window, hop_frac):
    hop = max(1, int(window * hop_frac))  # hop <= window: no gaps
    starts = window_starts(n, window, hop)
    if n < window:
        assert starts.size == 0
        return
    assert starts[0] == 0 and starts[-1] + window == n
    assert (np.diff(starts) > 0).all() and (np.diff(starts) <= hop).all()
    covered = np.zeros(n, bool)
    for s in starts:
        covered[s : s + window] = True
    assert covered.all()


def test_window_starts_rejects_bad_sizes():
    with pytest.raises(ValueError):
        window_starts(100, 0, 1)


def test_frame_shapes_and_values():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    w = frame(x, np.array([0, 3]), 4)
    assert w.shape == (2, 2, 4) and w.dtype == np.float32
    np.testing.assert_array_equal(w[1, 0], [6, 8, 10, 12])


def test_overlap_average_and_uncovered_nan():
    p = np.array([[1.0, 1, 1, 1], [3, 3, 3, 3]])
    out = overlap_average(p, np.array([0, 2]), 8)
    np.testing.assert_array_equal(out[:6], [1, 1, 2, 2, 3, 3])
    assert np.isnan(out[6:]).all()


def test_to_record_rate_linear_map_and_delay():
    scores = np.arange(100, dtype=float)  # at 100 Hz, value = model sample index
    out = to_record_rate(scores, 100.0, 500.0, 500)
    np.testing.assert_allclose(out[:5], [0, 0.2, 0.4, 0.6, 0.8])
    assert np.isnan(out[496:]).all()  # beyond the last model sample
    delayed = to_record_rate(scores, 100.0, 500.0, 500, delay_s=0.1)
    np.testing.assert_allclose(delayed[0], 10.0)  # record t=0 is model sample 10
    assert np.isnan(to_record_rate(np.full(10, np.nan), 100, 100, 10)).all()
