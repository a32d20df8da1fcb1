"""The one preprocessing definition shared by training, ``score`` and the streaming worker.

A :class:`Preprocessor` turns raw samples (physical units, the source's own rate) into the
model's input stream: polyphase resampling to the model rate, then a causal Butterworth band-pass.
Both stages are causal and keep their state between calls, so feeding a record in one call
(offline) or in 1 s chunks (streaming) gives the same output to float32 rounding. That is what
makes a window scored by ``ecgstream score`` and the same window scored from Kafka agree.

Causal filters delay the signal; :attr:`Preprocessor.delay_s` is the delay (seconds) that the
scorer removes when it maps scores back to the record's own time axis.

Filter design and filtering use numpy only (no ``scipy.signal``, whose import costs most of a
second): the designs are those of ``scipy.signal.firwin`` and ``scipy.signal.butter``, the
filters are evaluated blockwise as matrix products with the same state as ``scipy.signal``'s
``upfirdn`` and ``sosfilt``, and agree with them to float64 rounding.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np

__all__ = [
    "PreprocessConfig",
    "Preprocessor",
    "StreamingResampler",
    "CausalBandpass",
    "design_bandpass",
    "kaiser_lowpass",
    "sosfilt",
    "sosfilt_zi",
    "group_delay",
    "upfirdn_rows",
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


# ---------------------------------------------------------------- filter design (numpy)


def kaiser_lowpass(numtaps: int, cutoff: float, beta: float = 5.0) -> np.ndarray:
    """Linear-phase FIR low-pass with a Kaiser window, unit gain at DC.

    ``cutoff`` is relative to Nyquist; the design of ``scipy.signal.firwin(numtaps, cutoff,
    window=("kaiser", beta))``.
    """
    m = np.arange(numtaps) - 0.5 * (numtaps - 1)
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(numtaps, beta)
    return h / np.sum(h)


def _butter_zpk(
    order: int, edges_hz: list[float], btype: str, fs: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Zeros, poles and gain of a digital Butterworth filter (bilinear transform, pre-warped)."""
    warped = 4.0 * np.tan(np.pi * (np.asarray(edges_hz, dtype=np.float64) / (fs / 2)) / 2.0)
    p = -np.exp(1j * np.pi * np.arange(-order + 1, order, 2, dtype=np.float64) / (2 * order))
    if btype == "lowpass":
        z, p, k = np.zeros(0, complex), warped[0] * p, warped[0] ** order
    elif btype == "highpass":
        k = float(np.real(1.0 / np.prod(-p)))
        z, p = np.zeros(order, complex), warped[0] / p
    else:
        wo, bw = np.sqrt(warped[0] * warped[1]), warped[1] - warped[0]
        p_lp = p * bw / 2
        root = np.sqrt(p_lp**2 - wo**2)
        z, p, k = np.zeros(order, complex), np.concatenate((p_lp + root, p_lp - root)), bw**order
    # bilinear transform with fs = 2 (the edges were warped for it)
    z_z = np.concatenate(((4.0 + z) / (4.0 - z), -np.ones(len(p) - len(z))))
    k_z = k * float(np.real(np.prod(4.0 - z) / np.prod(4.0 - p)))
    return z_z, (4.0 + p) / (4.0 - p), k_z


def _zpk2sos(z: np.ndarray, p: np.ndarray, k: float) -> np.ndarray:
    """Second-order sections, pairing as ``scipy.signal.zpk2sos(pairing="nearest")``.

    Butterworth zeros are real (at +-1); each section takes the pole closest to the unit circle
    with its conjugate (or the next such real pole) and the two zeros nearest to it, and the
    sections closest to the unit circle come last.
    """
    z, p = np.real(z), np.asarray(p, dtype=complex)
    if len(p) % 2:
        z, p = np.append(z, 0.0), np.append(p, 0.0)
    tol = 100 * np.finfo(np.float64).eps
    real = np.abs(p.imag) <= tol * np.abs(p)
    upper = p[~real & (p.imag > 0)]
    poles = list(upper[np.lexsort((np.abs(upper.imag), upper.real))])
    poles += [complex(r) for r in np.sort(p[real].real)]
    zeros = list(np.sort(z))
    sos = np.zeros((len(p) // 2, 6))

    def worst(cands: list[complex]) -> int:
        return int(np.argmin(np.abs(1 - np.abs(np.asarray(cands)))))

    def nearest_zero(to: complex) -> float:
        return zeros.pop(int(np.argsort(np.abs(np.asarray(zeros) - to), kind="stable")[0]))

    for si in range(len(sos) - 1, -1, -1):
        p1 = poles.pop(worst(poles))
        if p1.imag == 0:
            reals = [i for i, q in enumerate(poles) if q.imag == 0]
            if not reals:
                sos[si] = [1.0, -nearest_zero(p1), 0.0, 1.0, -p1.real, 0.0]
                continue
            p2 = poles.pop(reals[worst([poles[i] for i in reals])])
        else:
            p2 = p1.conjugate()
        z1 = nearest_zero(p1)
        z2 = nearest_zero(p1)
        a = np.real(np.poly([p1, p2]))
        sos[si] = [1.0, -z1 - z2, z1 * z2, *a]
    sos[0, :3] *= k
    return sos


def sosfilt_zi(sos: np.ndarray) -> np.ndarray:
    """Initial state ``(sections, 2)`` for a unit step's steady state (``scipy.signal.sosfilt_zi``)."""
    zi = np.empty((len(sos), 2))
    scale = 1.0
    for i, (b, a) in enumerate(
        zip(sos[:, :3] / sos[:, 3:4], sos[:, 3:] / sos[:, 3:4], strict=True)
    ):
        i_minus_a = np.eye(2) - np.array([[-a[1], -a[2]], [1.0, 0.0]]).T
        zi[i] = scale * np.linalg.solve(i_minus_a, b[1:] - a[1:] * b[0])
        scale *= b.sum() / a.sum()
    return zi


def group_delay(sos: np.ndarray, f_hz: float, fs: float) -> float:
    """Group delay in samples of the cascade ``sos`` at ``f_hz`` (``scipy.signal.group_delay``)."""
    b, a = np.array([1.0]), np.array([1.0])
    for section in sos:
        b, a = np.polymul(b, section[:3]), np.polymul(a, section[3:])
    c = np.convolve(b, np.conjugate(a[::-1]))
    z = np.exp(-1j * 2 * np.pi * f_hz / fs)
    return float(
        np.real(np.polyval((c * np.arange(c.size))[::-1], z) / np.polyval(c[::-1], z)) - a.size + 1
    )


# ---------------------------------------------------------------- filtering (numpy)

#: samples per block of :func:`sosfilt` (one matrix product per block row)
SOSFILT_BLOCK = 256


@functools.lru_cache(maxsize=32)
def _block_matrices(sos_bytes: bytes, n_sections: int, length: int) -> tuple[np.ndarray, ...]:
    """Block form of a cascade of transposed direct-form II sections over ``length`` samples.

    With state ``s`` (``scipy.signal.sosfilt``'s ``zi`` flattened) and input block ``x``:
    ``y = T @ x + Obs @ s`` and ``s_next = P[len(x)] @ s + G[:, -len(x):] @ x``.
    """
    sos = np.frombuffer(sos_bytes, dtype=np.float64).reshape(n_sections, 6)
    b, a = sos[:, :3] / sos[:, 3:4], sos[:, 3:] / sos[:, 3:4]
    n = 2 * n_sections

    def step(state: np.ndarray, x: float) -> tuple[np.ndarray, float]:
        out = np.empty(n)
        for i in range(n_sections):
            y = b[i, 0] * x + state[2 * i]
            out[2 * i] = b[i, 1] * x - a[i, 1] * y + state[2 * i + 1]
            out[2 * i + 1] = b[i, 2] * x - a[i, 2] * y
            x = y
        return out, x

    cols = [step(e, 0.0) for e in np.eye(n)]
    A = np.stack([c[0] for c in cols], axis=1)
    C = np.array([c[1] for c in cols])
    B, D = step(np.zeros(n), 1.0)
    P = np.empty((length + 1, n, n))
    P[0] = np.eye(n)
    for i in range(length):
        P[i + 1] = A @ P[i]
    Obs = P[:length].transpose(0, 2, 1) @ C  # row k: C A^k
    h = np.concatenate(([D], Obs[: length - 1] @ B))  # impulse response
    idx = np.arange(length)
    lag = idx[:, None] - idx[None, :]
    T = np.where(lag >= 0, h[np.clip(lag, 0, None)], 0.0)
    G = (P[length - 1 :: -1] @ B).T  # column j: A^(length-1-j) B
    return T, Obs, G, P


def sosfilt(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Filter ``x`` ``(n, leads)`` with the cascade ``sos`` from state ``zi`` ``(sections, leads, 2)``.

    The state is that of ``scipy.signal.sosfilt`` (transposed direct form II per section), so
    the two can take over from each other. Blocks of :data:`SOSFILT_BLOCK` samples are filtered
    with one matrix product; returns the output (float64) and the final state.
    """
    n, leads = x.shape
    if n == 0:
        return np.zeros((0, leads)), np.array(zi, dtype=np.float64)
    n_sections = len(sos)
    length = min(n, SOSFILT_BLOCK)
    T, Obs, G, P = _block_matrices(
        np.ascontiguousarray(sos, np.float64).tobytes(), n_sections, length
    )
    state = zi.transpose(0, 2, 1).reshape(2 * n_sections, leads)
    n_full = n // length
    y = np.empty((n, leads))
    if n_full:
        blocks = x[: n_full * length].reshape(n_full, length, leads).transpose(1, 0, 2)
        blocks = blocks.reshape(length, n_full * leads)
        drive = (G @ blocks).reshape(2 * n_sections, n_full, leads)
        states = np.empty((n_full + 1, 2 * n_sections, leads))
        states[0] = state
        step = P[length]
        for i in range(n_full):
            states[i + 1] = step @ states[i] + drive[:, i]
        starts = states[:-1].transpose(1, 0, 2).reshape(2 * n_sections, n_full * leads)
        out = T @ blocks + Obs @ starts
        y[: n_full * length] = (
            out.reshape(length, n_full, leads).transpose(1, 0, 2).reshape(-1, leads)
        )
        state = states[-1]
    rest = n - n_full * length
    if rest:
        xr = x[n_full * length :]
        y[n_full * length :] = T[:rest, :rest] @ xr + Obs[:rest] @ state
        state = P[rest] @ state + G[:, length - rest :] @ xr
    return y, state.reshape(n_sections, 2, leads).transpose(0, 2, 1)


@functools.lru_cache(maxsize=64)
def _polyphase(h_bytes: bytes, up: int, down: int, phase0: int) -> np.ndarray:
    """Taps ``(rows, down, up)`` of :func:`upfirdn_rows` for outputs starting at phase ``phase0``.

    ``W[q, i, t]`` weighs input ``base + q * down + i`` in output ``t`` of a group of ``up``
    outputs, where ``base`` is the first input the group's first output depends on.
    """
    h = np.frombuffer(h_bytes, dtype=np.float64)
    per_phase = -(-len(h) // up)
    hp = np.zeros(per_phase * up)
    hp[: len(h)] = h
    t = phase0 + np.arange(up)
    last = t * down // up - phase0 * down // up  # last input of output t, from the first's
    phase = t * down % up
    n_rows = -(-(int(last[-1]) + per_phase) // down)
    k = (last[:, None] + per_phase - 1) - np.arange(n_rows * down)[None, :]  # tap per position
    W = np.where(
        (k >= 0) & (k < per_phase), hp[phase[:, None] + np.clip(k, 0, per_phase - 1) * up], 0.0
    )
    return np.ascontiguousarray(W.reshape(up, n_rows, down).transpose(1, 2, 0))


def upfirdn_rows(
    h: np.ndarray, x: np.ndarray, up: int, down: int, first: int, end: int
) -> np.ndarray:
    """Rows ``first:end`` of ``scipy.signal.upfirdn(h, x, up, down, axis=0)`` for ``x`` ``(n, leads)``.

    Output ``m`` is ``sum_i x[i] * h[m * down - i * up]``. Outputs ``m`` and ``m + up`` use the
    same taps on inputs ``down`` apart, so with the input cut into rows of ``down`` samples,
    ``up`` consecutive outputs are a few consecutive input rows times small polyphase matrices.
    """
    leads = x.shape[1]
    n_out = end - first
    if n_out <= 0:
        return np.zeros((0, leads))
    W = _polyphase(np.ascontiguousarray(h, np.float64).tobytes(), up, down, first % up)
    n_rows = len(W)
    base = first * down // up - (-(-len(h) // up)) + 1
    groups = -(-n_out // up)
    rows = np.zeros((leads, (groups + n_rows - 1) * down))
    lo, hi = max(0, base), min(len(x), base + rows.shape[1])
    rows[:, lo - base : hi - base] = x[lo:hi].T
    rows = rows.reshape(leads, groups + n_rows - 1, down)
    y = rows[:, :groups] @ W[0]
    for q in range(1, n_rows):
        y += rows[:, q : q + groups] @ W[q]
    return y.reshape(leads, groups * up)[:, :n_out].T


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
        self.h = kaiser_lowpass(2 * half_len + 1, 1.0 / max_rate) * self.up
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
        out = upfirdn_rows(self.h, buf, self.up, self.down, self._n_out - offset, n_end - offset)
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
    return _design_bandpass(cfg.order, low, high, cfg.fs).copy()


@functools.lru_cache(maxsize=64)
def _design_bandpass(order: int, low: float | None, high: float | None, fs: float) -> np.ndarray:
    if low is not None and high is not None:
        z, p, k = _butter_zpk(order, [low, high], "bandpass", fs)
    elif low is not None:
        z, p, k = _butter_zpk(order, [low], "highpass", fs)
    else:
        z, p, k = _butter_zpk(order, [high], "lowpass", fs)
    return _zpk2sos(z, p, k)


class CausalBandpass:
    """Causal Butterworth band-pass with per-lead state (see :func:`sosfilt`).

    The state starts at the steady state for the first sample, so a DC offset gives no step.
    """

    def __init__(self, cfg: PreprocessConfig, n_leads: int):
        self.n_leads = n_leads
        self._zi: np.ndarray | None = None
        self.sos = design_bandpass(cfg)
        self.delay_s = 0.0
        #: what filters that can run side by side share (None without a filter)
        self.group_key: tuple | None = None
        if self.sos is None:
            return
        self.group_key = (self.sos.shape, self.sos.tobytes())
        self._zi0 = sosfilt_zi(self.sos)  # (sections, 2)
        # group delay near the QRS band (10 Hz, or a tenth of the rate for slow series), seconds
        w = min(10.0, cfg.fs / 10)
        self.delay_s = group_delay(self.sos, w, cfg.fs) / cfg.fs

    def process(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, self.n_leads), np.float32)
        if self.sos is None:
            return np.asarray(x, dtype=np.float32)
        x = np.asarray(x, dtype=np.float64)
        if self._zi is None:
            # (sections, n_leads, 2) scaled by the first sample of each lead
            self._zi = self._zi0[:, None, :] * x[0][None, :, None]
        y, self._zi = sosfilt(self.sos, x, self._zi)
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
    from scipy import signal as sps

    sos = design_bandpass(PreprocessConfig(fs, cfg.highpass_hz, cfg.lowpass_hz, cfg.order))
    if sos is None:
        return np.asarray(signal, dtype=np.float32)
    return sps.sosfiltfilt(sos, signal, axis=0).astype(np.float32)
