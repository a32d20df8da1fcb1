"""The one preprocessing definition: chunked (streaming) equals whole-record, at common ECG rates."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_ecg

from ecgstream.signals.preprocess import (
    PreprocessConfig,
    Preprocessor,
    StreamingResampler,
    preprocess,
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
