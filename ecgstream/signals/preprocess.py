"""The one preprocessing definition shared by training, ``score`` and the streaming worker.

A :class:`Preprocessor` turns raw samples (physical units, the source's own rate) into the
model's input stream: polyphase resampling to the model rate, then a causal Butterworth band-pass.
Both stages are causal and keep their state between calls, so feeding a record in one call
(offline) or in 1 s chunks (streaming) gives the same output to float32 rounding. That is what
makes a window scored by ``ecgstream score`` and the same window scored from Kafka agree.

Causal filters delay the signal; :attr:`Preprocessor.delay_s` is the delay (seconds) that the
scorer removes when it maps scores back to the record's own time axis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
from scipy import signal as sps

__all__ = [
    "PreprocessConfig",
    "Preprocessor",
    "StreamingResampler",
    "CausalBandpass",
    "design_bandpass",
    "preprocess",
    "zero_phase_bandpass",
]


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing parameters, stored in every model's metadata.

    ``fs`` is the model's sampling rate (Hz); the band-pass keeps ``highpass_hz`` to
    ``lowpass_hz`` with a Butterworth filter of ``order`` (per edge).
    """

    fs: float = 100.0
    highpass_hz: float = 0.5
    lowpass_hz: float = 40.0
    order: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        return cls(**{k: d[k] for k in ("fs", "highpass_hz", "lowpass_hz", "order") if k in d})


def _ratio(fs_in: float, fs_out: float) -> tuple[int, int]:
    frac = Fraction(fs_out / fs_in).limit_denominator(1000)
    return frac.numerator, frac.denominator


class StreamingResampler:
    """Causal polyphase FIR resampler from ``fs_in`` to ``fs_out`` Hz with carried state.

    Uses the same Kaiser-windowed low-pass design as :func:`scipy.signal.resample_poly`, but
    evaluated causally, so chunked and whole-signal input give identical output. The signal
    before the first sample is taken to be equal to the first sample (no start-up step).
    """

    def __init__(self, fs_in: float, fs_out: float, n_leads: int):
        self.fs_in, self.fs_out = float(fs_in), float(fs_out)
        self.up, self.down = _ratio(fs_in, fs_out)
        self.identity = self.up == self.down
        self.n_leads = n_leads
        if self.identity:
            self.delay_s = 0.0
            return
        max_rate = max(self.up, self.down)
        half_len = 10 * max_rate
        self.h = sps.firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
        self.taps = -(-len(self.h) // self.up)  # input samples one output depends on
        self.delay_s = half_len / (self.fs_in * self.up)
        # Internal input indices count a lead-in of copies of the first sample; the buffer always
        # starts at a multiple of `down` so upfirdn's output grid lines up with the stream's.
        self._lead_in = -(-(self.taps - 1) // self.down) * self.down
        self._history: np.ndarray | None = None
        self._buf_start = 0  # internal index of history[0]
        self._n_in = 0  # internal input samples seen
        self._n_out = 0  # internal output samples produced

    def process(self, x: np.ndarray) -> np.ndarray:
        """Resample a chunk ``(n, n_leads)``; returns the output samples it completes."""
        if self.identity:
            return np.asarray(x, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, self.n_leads), np.float32)
        x = np.asarray(x, dtype=np.float64)
        if self._history is None:
            self._history = np.repeat(x[:1], self._lead_in, axis=0)
            self._n_in = self._lead_in
            self._n_out = self._lead_in * self.up // self.down
        buf = np.concatenate([self._history, x])
        n_total = self._n_in + len(x)
        n_end = ((n_total - 1) * self.up) // self.down + 1
        offset = self._buf_start * self.up // self.down
        y = sps.upfirdn(self.h, buf, self.up, self.down, axis=0)
        out = y[self._n_out - offset : n_end - offset]
        new_start = ((n_total - (self.taps - 1)) // self.down) * self.down
        self._history = buf[new_start - self._buf_start :]
        self._buf_start = new_start
        self._n_in, self._n_out = n_total, n_end
        return out.astype(np.float32)


def design_bandpass(cfg: PreprocessConfig) -> np.ndarray | None:
    """Second-order sections of the configured filter, or None when both edges are off (<= 0).

    A zero ``highpass_hz`` gives a low-pass only, a zero ``lowpass_hz`` a high-pass only; edges
    above 0.95 x Nyquist are clipped.
    """
    nyq = cfg.fs / 2
    low = cfg.highpass_hz if cfg.highpass_hz > 0 else None
    high = min(cfg.lowpass_hz, 0.95 * nyq) if cfg.lowpass_hz > 0 else None
    if low is None and high is None:
        return None
    if low is not None and high is not None:
        return sps.butter(cfg.order, [low, high], btype="bandpass", fs=cfg.fs, output="sos")
    if low is not None:
        return sps.butter(cfg.order, low, btype="highpass", fs=cfg.fs, output="sos")
    return sps.butter(cfg.order, high, btype="lowpass", fs=cfg.fs, output="sos")


class CausalBandpass:
    """Causal Butterworth band-pass with per-lead state (``scipy.signal.sosfilt``).

    The state starts at the steady state for the first sample, so a DC offset gives no step.
    """

    def __init__(self, cfg: PreprocessConfig, n_leads: int):
        self.n_leads = n_leads
        self._zi: np.ndarray | None = None
        self.sos = design_bandpass(cfg)
        self.delay_s = 0.0
        if self.sos is None:
            return
        self._zi0 = sps.sosfilt_zi(self.sos)  # (sections, 2)
        # group delay near the QRS band (10 Hz, or a tenth of the rate for slow series), seconds
        w = min(10.0, cfg.fs / 10)
        _, gd = sps.group_delay(sps.sos2tf(self.sos), w=[w], fs=cfg.fs)
        self.delay_s = float(gd[0]) / cfg.fs

    def process(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, self.n_leads), np.float32)
        if self.sos is None:
            return np.asarray(x, dtype=np.float32)
        x = np.asarray(x, dtype=np.float64)
        if self._zi is None:
            # (sections, n_leads, 2) scaled by the first sample of each lead
            self._zi = self._zi0[:, None, :] * x[0][None, :, None]
        y, self._zi = sps.sosfilt(self.sos, x, axis=0, zi=self._zi.transpose(0, 2, 1))
        self._zi = self._zi.transpose(0, 2, 1)
        return y.astype(np.float32)


class Preprocessor:
    """Stateful raw-to-model-input transform for one stream: resample, then band-pass.

    >>> import numpy as np
    >>> pre = Preprocessor(PreprocessConfig(fs=100.0), fs_in=360.0, n_leads=1)
    >>> x = np.random.default_rng(0).normal(size=(3600, 1)).astype(np.float32)
    >>> whole = Preprocessor(PreprocessConfig(fs=100.0), 360.0, 1).process(x)
    >>> parts = np.concatenate([pre.process(x[i:i + 360]) for i in range(0, 3600, 360)])
    >>> bool(np.allclose(whole, parts, atol=1e-5)), whole.shape
    (True, (1000, 1))
    """

    def __init__(self, cfg: PreprocessConfig, fs_in: float, n_leads: int):
        if fs_in <= 0:
            raise ValueError(f"sampling rate must be positive, got {fs_in} Hz")
        self.cfg = cfg
        self.resampler = StreamingResampler(fs_in, cfg.fs, n_leads)
        self.bandpass = CausalBandpass(cfg, n_leads)
        self.delay_s = self.resampler.delay_s + self.bandpass.delay_s

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Transform a chunk ``(n, n_leads)`` at the input rate into ``(m, n_leads)`` at ``cfg.fs``."""
        return self.bandpass.process(self.resampler.process(chunk))


def preprocess(signal: np.ndarray, fs_in: float, cfg: PreprocessConfig) -> tuple[np.ndarray, float]:
    """Whole-record preprocessing; returns the model-rate signal and its delay in seconds."""
    pre = Preprocessor(cfg, fs_in, signal.shape[1])
    return pre.process(signal), pre.delay_s


def zero_phase_bandpass(signal: np.ndarray, fs: float, cfg: PreprocessConfig) -> np.ndarray:
    """Zero-phase (forward-backward) version of the band-pass, for offline plots and analysis."""
    sos = design_bandpass(PreprocessConfig(fs, cfg.highpass_hz, cfg.lowpass_hz, cfg.order))
    if sos is None:
        return np.asarray(signal, dtype=np.float32)
    return sps.sosfiltfilt(sos, signal, axis=0).astype(np.float32)
