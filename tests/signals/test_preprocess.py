"""The one preprocessing definition: chunked (streaming) equals whole-record, at common ECG rates."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_ecg

from ecgstream.signals.preprocess import (
    PreprocessConfig,
    Preprocessor,
    StreamingResampler,
    design_bandpass,
    group_delay,
    kaiser_lowpass,
    preprocess,
    sosfilt,
    sosfilt_zi,
    upfirdn_rows,
    zero_phase_bandpass,
)


def chunked(x: np.ndarray, fs_in: float, cfg: PreprocessConfig, sizes: np.ndarray) -> np.ndarray:
    pre = Preprocessor(cfg, fs_in, x.shape[1])
    out, i, k = [], 0, 0
    while i < len(x):
        n = int(sizes[k % len(sizes)])
        out.append(pre.process(x[i : i + n]))
        i, k = i + n, k + 1
    return np.concatenate(out)


@pytest.mark.parametrize("fs_in", [360, 500, 250, 100])
@pytest.mark.parametrize("fs_model", [100.0, 250.0])
def test_chunked_equals_whole(fs_in, fs_model):
    x = synthetic_ecg(20, fs_in, seed=fs_in, n_leads=2) + 0.3  # with a DC offset
    cfg = PreprocessConfig(fs=fs_model)
    whole, delay = preprocess(x, fs_in, cfg)
    sizes = np.random.default_rng(fs_in).integers(1, int(1.5 * fs_in), size=64)
    parts = chunked(x, fs_in, cfg, sizes)
    assert parts.shape == whole.shape
    assert abs(len(whole) - len(x) * fs_model / fs_in) <= 2
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    assert delay >= 0


def test_one_sample_chunks_equal_whole():
    x = synthetic_ecg(4, 360, seed=1)
    cfg = PreprocessConfig(fs=100.0)
    whole, _ = preprocess(x, 360, cfg)
    np.testing.assert_allclose(chunked(x, 360, cfg, np.array([1])), whole, atol=1e-5)


def test_bandpass_removes_dc_and_keeps_qrs_band():
    fs = 100.0
    t = np.arange(3000) / fs
    x = (5.0 + np.sin(2 * np.pi * 10 * t))[:, None].astype(np.float32)
    y, _ = preprocess(x, fs, PreprocessConfig(fs=fs))
    tail = y[1000:, 0]
    assert abs(tail.mean()) < 0.02
    assert 0.8 < tail.std() * np.sqrt(2) < 1.1


def test_delay_matches_a_shifted_spike():
    """A spike appears ``delay_s`` later in the model-rate output (what the scorer undoes)."""
    fs_in, cfg = 360.0, PreprocessConfig(fs=100.0)
    x = np.zeros((3600, 1), np.float32)
    x[1800] = 50.0  # at 5.0 s
    y, delay = preprocess(x, fs_in, cfg)
    peak_s = np.argmax(np.abs(y[:, 0])) / cfg.fs
    assert abs(peak_s - (5.0 + delay)) < 0.03


def test_identity_resampler_passes_through():
    r = StreamingResampler(250, 250, 1)
    x = np.arange(10, dtype=np.float32)[:, None]
    assert r.delay_s == 0 and np.array_equal(r.process(x), x)


def test_zero_phase_bandpass_has_no_delay():
    fs = 250.0
    x = np.zeros((2500, 1), np.float32)
    x[1250] = 1.0
    y = zero_phase_bandpass(x, fs, PreprocessConfig(fs=fs))
    assert np.argmax(np.abs(y[:, 0])) == 1250


def test_bad_rate_raises():
    with pytest.raises(ValueError, match="positive"):
        Preprocessor(PreprocessConfig(), 0, 1)


# ---------------------------------------------------------------- numpy filters vs scipy.signal


def scipy_bandpass(cfg: PreprocessConfig):
    from scipy import signal as sps

    nyq = cfg.fs / 2
    low = cfg.highpass_hz if cfg.highpass_hz > 0 else None
    high = min(cfg.lowpass_hz, 0.95 * nyq) if cfg.lowpass_hz > 0 else None
    if low is not None and high is not None:
        return sps.butter(cfg.order, [low, high], btype="bandpass", fs=cfg.fs, output="sos")
    if low is not None:
        return sps.butter(cfg.order, low, btype="highpass", fs=cfg.fs, output="sos")
    return sps.butter(cfg.order, high, btype="lowpass", fs=cfg.fs, output="sos")


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("fs", [100.0, 250.0, 360.0, 500.0])
@pytest.mark.parametrize(
    "edges", [(0.5, 40.0), (0.05, 150.0), (0.5, 0.0), (0.0, 40.0), (1.0, 15.0)]
)
def test_filter_design_equals_scipy(order, fs, edges):
    from scipy import signal as sps

    cfg = PreprocessConfig(fs, *edges, order)
    ref = scipy_bandpass(cfg)
    sos = design_bandpass(cfg)
    np.testing.assert_allclose(sos, ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sosfilt_zi(sos), sps.sosfilt_zi(ref), rtol=1e-9, atol=1e-12)
    w = min(10.0, fs / 10)
    _, gd = sps.group_delay(sps.sos2tf(ref), w=[w], fs=fs)
    assert group_delay(sos, w, fs) == pytest.approx(gd[0], rel=1e-9)


@pytest.mark.parametrize("up,down", [(5, 18), (1, 5), (2, 5), (5, 2), (5, 9), (3, 1), (25, 36)])
def test_upfirdn_rows_equal_scipy(up, down):
    from scipy import signal as sps

    rate = max(up, down)
    h = sps.firwin(20 * rate + 1, 1.0 / rate, window=("kaiser", 5.0)) * up
    np.testing.assert_allclose(kaiser_lowpass(20 * rate + 1, 1.0 / rate) * up, h, atol=1e-15)
    x = np.random.default_rng(up * down).normal(size=(777, 2))
    full = sps.upfirdn(h, x, up, down, axis=0)
    for first, end in [(0, len(full)), (3, 50), (17, 18), (len(full) - 7, len(full))]:
        np.testing.assert_allclose(
            upfirdn_rows(h, x, up, down, first, end), full[first:end], atol=1e-12
        )


@pytest.mark.parametrize("n", [1, 5, 256, 1000, 20_001])
def test_sosfilt_equals_scipy_and_shares_its_state(n):
    from scipy import signal as sps

    rng = np.random.default_rng(n)
    sos = design_bandpass(PreprocessConfig(fs=360.0, order=3))
    x = rng.normal(size=(n, 2)).cumsum(axis=0) * 0.01 + 0.3
    zi = rng.normal(size=(len(sos), 2, 2))  # (sections, leads, 2)
    y, zf = sosfilt(sos, x, zi)
    y_ref, zf_ref = sps.sosfilt(sos, x, axis=0, zi=zi.transpose(0, 2, 1))
    scale = np.abs(y_ref).max()
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-11 * scale)
    np.testing.assert_allclose(zf, zf_ref.transpose(0, 2, 1), rtol=0, atol=1e-11 * scale)
    # scipy continues from our final state as from its own (the streaming worker mixes both)
    more = rng.normal(size=(50, 2))
    a, _ = sps.sosfilt(sos, more, axis=0, zi=zf.transpose(0, 2, 1))
    b, _ = sps.sosfilt(sos, more, axis=0, zi=zf_ref)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-11 * scale)
