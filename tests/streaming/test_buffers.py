"""Per-stream buffers: chunked windows equal offline windows; gaps, duplicates, lead mapping."""

from __future__ import annotations

import numpy as np
import pytest

from ecgstream.runtime.model_file import ModelSpec
from ecgstream.signals.preprocess import preprocess
from ecgstream.signals.windows import frame, window_starts
from ecgstream.streaming.buffers import LeadMismatch, StreamBuffer, preprocess_pending
from ecgstream.streaming.wire import Chunk

T0 = 1_700_000_000.0  # a whole second: on the window grid


def _spec(leads=("MLII",), window=200, hop=50) -> ModelSpec:
    return ModelSpec("m", "1", "test", list(leads), window, hop)


def _signal(n, leads=2, seed=0):
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(0, 0.05, size=(n, leads)), axis=0).astype(np.float32)


def _feed(buf, x, fs, chunk_n, seqs=None, t0=T0, leads=("MLII", "V1")):
    ks, data = [], []
    for i, a in enumerate(range(0, len(x) - chunk_n + 1, chunk_n)):
        seq = i if seqs is None else seqs[i]
        if seq is None:
            continue
        events = buf.accept(
            Chunk("s", seq, t0 + a / fs, fs, list(leads), x[a : a + chunk_n]), offset=i
        )
        w, _ = buf.take_windows()
        ks.extend(w.index.tolist())
        data.append(w.data)
        yield events
    buf.result = (np.array(ks), np.concatenate(data))


@pytest.mark.parametrize(
    "fs_in,chunk_n,t0", [(360.0, 360, T0), (500.0, 500, T0 + 0.37), (100.0, 37, T0 + 5.01)]
)
def test_chunked_windows_equal_offline_windows(fs_in, chunk_n, t0):
    spec = _spec()
    x = _signal(int(fs_in * 20))
    buf = StreamBuffer("s", spec)
    list(_feed(buf, x, fs_in, chunk_n, t0=t0))
    ks, data = buf.result
    offline, _ = preprocess(x[:, :1], fs_in, spec.preprocess_config)
    starts = window_starts(len(offline), spec.window, spec.hop)
    expected = frame(offline, starts, spec.window)
    a0 = int(round(t0 * spec.fs))  # window ids are absolute start samples at the model rate
    assert ks[0] == a0 and np.all(np.diff(ks) == spec.hop)
    n = len(ks)
    assert n >= len(starts) - 2 and np.array_equal(ks - a0, starts[:n])
    np.testing.assert_allclose(data, expected[:n], atol=1e-5)


def test_buffer_holds_at_most_a_window_and_a_hop_of_samples():
    """Samples no window needs are dropped (when the next window is cut), so a long stream's
    buffer stays bounded: a window plus a hop, plus one chunk, at the model rate."""
    spec = _spec(window=200, hop=50)
    fs_in, chunk_n = 360.0, 90  # a quarter of a second per chunk
    buf = StreamBuffer("s", spec)
    x = _signal(int(fs_in * 120))
    longest = 0
    for _ in _feed(buf, x, fs_in, chunk_n):
        longest = max(longest, buf.a_end - buf.buf_a0)
    chunk_model = int(np.ceil(chunk_n * spec.fs / fs_in))
    assert len(buf.result[0]) > 200  # many windows were cut
    assert longest <= spec.window + spec.hop + chunk_model


def test_gap_restarts_the_filters_and_keeps_the_grid():
    spec = _spec()
    x = _signal(360 * 20)
    buf = StreamBuffer("s", spec)
    seqs = list(range(20))
    seqs[8] = seqs[9] = None  # two chunks lost
    events = [e for evs in _feed(buf, x, 360.0, 360, seqs) for e in evs]
    assert [e.kind for e in events] == ["gap"]
    assert events[0].start_s == pytest.approx(T0 + 8) and events[0].end_s == pytest.approx(T0 + 10)
    ks, _ = buf.result
    starts = (ks - int(T0 * spec.fs)) / spec.fs  # seconds from the stream start
    # no window covers the missing span [8 s, 10 s)
    assert not np.any((starts < 10) & (starts + spec.window / spec.fs > 8))
    assert starts.max() > 10


def test_duplicates_are_dropped():
    spec = _spec()
    x = _signal(360 * 5)
    buf = StreamBuffer("s", spec)
    c = Chunk("s", 0, T0, 360.0, ["MLII"], x[:360, :1])
    assert buf.accept(c) == []
    assert [e.kind for e in buf.accept(c)] == ["duplicate"]
    assert buf.n_in == 360


def test_leads_are_mapped_by_name_or_rejected():
    buf = StreamBuffer("s", _spec(leads=("MLII",)))
    x = _signal(360, leads=2)
    buf.accept(Chunk("s", 0, T0, 360.0, ["V1", "MLII"], x))
    assert buf.lead_idx == [1]
    twelve = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    buf = StreamBuffer("s", _spec(leads=("MLII",)))
    buf.accept(Chunk("s", 0, T0, 500.0, twelve, _signal(500, leads=12)))
    assert buf.lead_idx == [1]  # lead II of a 12-lead monitor, not lead I
    with pytest.raises(LeadMismatch, match="needs"):
        StreamBuffer("s", _spec(leads=("I", "II", "V1"))).accept(
            Chunk("s", 0, T0, 360.0, ["MLII", "V1"], x)
        )


def test_missing_samples_do_not_poison_the_filters():
    buf = StreamBuffer("s", _spec())
    x = _signal(360 * 6, leads=1)
    x[400:800] = np.nan
    for i in range(6):
        buf.accept(Chunk("s", i, T0 + i, 360.0, ["MLII"], x[i * 360 : (i + 1) * 360]))
    w, _ = buf.take_windows()
    assert len(w.index) and np.isfinite(w.data).all()


def test_needed_offset_is_the_oldest_chunk_an_unfinished_window_needs():
    spec = _spec(window=300, hop=100)  # 3 s windows every 1 s at 100 Hz
    buf = StreamBuffer("s", spec)
    x = _signal(360 * 10, leads=1)
    for i in range(10):
        buf.accept(
            Chunk("s", i, T0 + i, 360.0, ["MLII"], x[i * 360 : (i + 1) * 360]), offset=100 + i
        )
        buf.take_windows()
        # the next window starts 2 s before the end of chunk i
        if i >= 2:
            assert buf.needed_offset() == 100 + i - 1


def _ffill(x: np.ndarray) -> np.ndarray:
    """Each lead's missing samples replaced by its last valid one before them (0 at first)."""
    out = x.copy()
    for lead in range(x.shape[1]):
        last = 0.0
        for i, v in enumerate(x[:, lead]):
            last = out[i, lead] = last if np.isnan(v) else v
    return out


@pytest.mark.parametrize("fs_in", [360.0, 100.0])
def test_batched_preprocessing_fills_missing_samples_in_stream_order(fs_in):
    """Many streams preprocessed together, some with two chunks in one batch, missing samples
    at a chunk's start, whole chunks missing: each stream's windows equal the offline
    preprocessing of its signal with missing samples carried forward."""
    spec = _spec(leads=("MLII", "V1"))
    n, chunk_n = int(fs_in * 12), int(fs_in)
    signals = []
    for s in range(6):
        x = _signal(n, leads=2, seed=s)
        if s % 2:
            x[chunk_n * 2 : chunk_n * 2 + 7, 0] = np.nan  # at a chunk's start
            x[chunk_n * 4 : chunk_n * 6, 1] = np.nan  # two whole chunks of one lead
            x[:3] = np.nan  # the very first samples
        signals.append(x)
    bufs = [StreamBuffer(f"s{s}", spec) for s in range(6)]
    got: list[list[np.ndarray]] = [[] for _ in bufs]
    polls = [[0], [1, 2], [3], [4, 5], [6], [7, 8, 9], [10], [11]]  # chunk indices per batch
    for k, poll in enumerate(polls):
        for s, (buf, x) in enumerate(zip(bufs, signals, strict=True)):
            for i in poll:
                c = Chunk(
                    f"s{s}", i, T0 + i, fs_in, ["MLII", "V1"], x[i * chunk_n : (i + 1) * chunk_n]
                )
                buf.accept(c, defer=True)
            if (s + k) % 3 == 0:  # as a pipeline does after checking the batch itself
                for p in buf.pending:
                    p.x, p.has_nan = p.input().copy(), bool(np.isnan(p.input()).any())
        preprocess_pending(bufs)
        for s, buf in enumerate(bufs):
            w, _ = buf.take_windows()
            got[s].append(w.data)
    for s, x in enumerate(signals):
        offline, _ = preprocess(_ffill(x), fs_in, spec.preprocess_config)
        expected = frame(offline, window_starts(len(offline), spec.window, spec.hop), spec.window)
        data = np.concatenate(got[s])
        assert len(data) >= 3 and np.isfinite(data).all()
        np.testing.assert_allclose(data, expected[: len(data)], atol=1e-5)
