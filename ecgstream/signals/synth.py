"""Perlin-noise anomaly synthesis with exact masks (after 3D-PNAS), for 1-D signals and 2-D images.

The domain (time for signals; frequency x time for spectrograms) is covered with multi-octave
Perlin gradient noise; thresholding the noise gives an irregular region, and the signal is
displaced inside that region only. The returned boolean mask is exact: every sample outside it is
bit-for-bit unchanged, every sample inside it was written by the displacement.

Uses: validation sets with known anomaly masks (threshold calibration and localisation metrics
when no real anomalies exist), positives for refiner and discriminator heads, test fixtures.

Everything is vectorised numpy and seeded by a :class:`numpy.random.Generator`, so the same seed
gives the same anomalies.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = np.sin(np.linspace(0, 60, 3000))[:, None].astype(np.float32)
>>> y, mask, info = inject_1d(x, 100.0, rng, kinds=["flat"])
>>> bool(np.array_equal(y[~mask], x[~mask])), info["kind"], bool(mask.any())
(True, 'flat', True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "KINDS_1D",
    "KINDS_2D",
    "perlin_1d",
    "perlin_2d",
    "region_1d",
    "region_2d",
    "displace_1d",
    "inject_1d",
    "inject_2d",
    "inject_many",
    "components",
    "parse_kinds",
]

#: displacement kinds for 1-D signals
KINDS_1D = ("amplitude", "wander", "noise", "flat", "invert", "warp", "paste")
#: displacement kinds for 2-D (log-energy) images
KINDS_2D = ("raise", "lower")


def parse_kinds(text: str, known: Sequence[str] = KINDS_1D) -> list[str]:
    """The kinds named in a comma-separated ``text`` (e.g. ``"wander,noise"``), checked.

    >>> parse_kinds("noise, flat")
    ['noise', 'flat']
    """
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in known]
    if not kinds:
        raise ValueError(f"no anomaly kind named in {text!r}; choose from {', '.join(known)}")
    if unknown:
        raise ValueError(
            f"anomaly kinds {text!r}: unknown {unknown}; choose from {', '.join(known)}"
        )
    return kinds


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade curve 6t^5 - 15t^4 + 10t^3 (zero slope and curvature at 0 and 1)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _gradient_1d(n: int, period: float, rng: np.random.Generator) -> np.ndarray:
    x = np.arange(n) / period + rng.uniform(0, 1)
    i0 = np.floor(x).astype(np.int64)
    t = x - i0
    grads = rng.uniform(-1.0, 1.0, size=int(i0[-1]) + 2 if n else 2)
    g0, g1 = grads[i0], grads[i0 + 1]
    return (g0 * t + (g1 * (t - 1.0) - g0 * t) * _fade(t)) * 2.0


def perlin_1d(
    n: int,
    rng: np.random.Generator,
    octaves: int = 4,
    base_period: float = 256.0,
    persistence: float = 0.5,
) -> np.ndarray:
    """Multi-octave 1-D Perlin noise of ``n`` samples, roughly in ``[-1, 1]``.

    ``base_period`` is the lattice spacing of the coarsest octave in samples; each further octave
    halves the period and multiplies the amplitude by ``persistence``.

    >>> import numpy as np
    >>> p = perlin_1d(1000, np.random.default_rng(1), base_period=100)
    >>> p.shape, bool(np.abs(p).max() <= 1.0), bool(p.std() > 0.05)
    ((1000,), True, True)
    """
    if n <= 0:
        return np.zeros(0)
    if base_period <= 0 or octaves < 1:
        raise ValueError(f"base_period must be > 0 and octaves >= 1 (got {base_period}, {octaves})")
    out = np.zeros(n)
    amp, total = 1.0, 0.0
    for k in range(octaves):
        period = max(base_period / 2**k, 1.0)
        out += amp * _gradient_1d(n, period, rng)
        total += amp
        amp *= persistence
    return np.clip(out / total, -1.0, 1.0)


def perlin_2d(
    shape: tuple[int, int],
    rng: np.random.Generator,
    octaves: int = 3,
    base_period: tuple[float, float] = (16.0, 32.0),
    persistence: float = 0.5,
) -> np.ndarray:
    """Multi-octave 2-D Perlin noise of ``shape`` ``(rows, cols)``, roughly in ``[-1, 1]``.

    ``base_period`` is the coarsest lattice spacing ``(rows, cols)`` in pixels (for a
    spectrogram: frequency bins, time frames); random unit gradients on the lattice.

    >>> import numpy as np
    >>> p = perlin_2d((33, 64), np.random.default_rng(2), base_period=(8, 16))
    >>> p.shape, bool(np.abs(p).max() <= 1.0), bool(p.std() > 0.05)
    ((33, 64), True, True)
    """
    rows, cols = shape
    out = np.zeros((rows, cols))
    amp, total = 1.0, 0.0
    for k in range(octaves):
        pr = max(base_period[0] / 2**k, 1.0)
        pc = max(base_period[1] / 2**k, 1.0)
        y = np.arange(rows) / pr + rng.uniform(0, 1)
        x = np.arange(cols) / pc + rng.uniform(0, 1)
        y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
        ty, tx = (y - y0)[:, None], (x - x0)[None, :]
        angles = rng.uniform(0, 2 * np.pi, size=(int(y0[-1]) + 2, int(x0[-1]) + 2))
        gy, gx = np.sin(angles), np.cos(angles)

        def corner(dy: int, dx: int, gy=gy, gx=gx, y0=y0, x0=x0, ty=ty, tx=tx) -> np.ndarray:
            iy, ix = (y0 + dy)[:, None], (x0 + dx)[None, :]
            return gy[iy, ix] * (ty - dy) + gx[iy, ix] * (tx - dx)

        fy, fx = _fade(ty), _fade(tx)
        top = corner(0, 0) + fx * (corner(0, 1) - corner(0, 0))
        bottom = corner(1, 0) + fx * (corner(1, 1) - corner(1, 0))
        out += amp * (top + fy * (bottom - top)) * np.sqrt(2.0)
        total += amp
        amp *= persistence
    return np.clip(out / total, -1.0, 1.0)


def components(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True in a 1-D boolean mask as ``(start, end)`` sample pairs (end exclusive).

    >>> components(np.array([0, 1, 1, 0, 1], bool))
    [(1, 3), (4, 5)]
    """
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    )


def region_1d(
    n: int,
    rng: np.random.Generator,
    min_len: int,
    max_len: int,
    roughness: float = 1.0,
    octaves: int = 3,
) -> tuple[np.ndarray, int, int]:
    """A Perlin region inside one random span of ``min_len..max_len`` samples of ``n``.

    Perlin noise scaled by ``roughness`` is added to a bump that is high in the middle of the span
    and low at its ends, and thresholded at zero: ``roughness=0`` gives exactly the span,
    larger values give an irregular, sometimes fragmented region that always contains the span's
    centre. Returns ``(mask (n,) bool, span_start, span_end)``.
    """
    if not 0 < min_len <= max_len:
        raise ValueError(f"need 0 < min_len <= max_len samples (got {min_len}, {max_len})")
    max_len = min(max_len, n)
    min_len = min(min_len, max_len)
    length = int(rng.integers(min_len, max_len + 1))
    start = int(rng.integers(0, n - length + 1))
    u = (np.arange(length) + 0.5) / length
    bump = 1.0 - np.abs(2.0 * u - 1.0) ** 4  # 1 in the middle, 0 at the ends
    field = bump + roughness * (perlin_1d(length, rng, octaves, max(length / 4.0, 2.0)) - 0.3)
    inside = field > 0
    inside[length // 2] = True
    mask = np.zeros(n, dtype=bool)
    mask[start : start + length] = inside
    return mask, start, start + length


def region_2d(
    shape: tuple[int, int],
    rng: np.random.Generator,
    min_frac: float = 0.02,
    max_frac: float = 0.15,
    octaves: int = 3,
    base_period: tuple[float, float] | None = None,
) -> np.ndarray:
    """An irregular Perlin region covering ``min_frac..max_frac`` of a 2-D domain ``(rows, cols)``.

    The threshold is the noise quantile that gives the drawn coverage, so the area is exact to
    one pixel and the shape follows the noise (blobs, not rectangles).
    """
    rows, cols = shape
    if base_period is None:
        base_period = (max(rows / 2.0, 2.0), max(cols / 4.0, 2.0))
    noise = perlin_2d(shape, rng, octaves, base_period)
    frac = float(rng.uniform(min_frac, max_frac))
    k = max(1, int(round(frac * rows * cols)))
    order = np.argsort(noise, axis=None)[::-1][:k]
    mask = np.zeros(rows * cols, dtype=bool)
    mask[order] = True
    return mask.reshape(rows, cols)


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-lead median and a robust scale (never zero) of ``x`` ``(n, leads)``."""
    med = np.median(x, axis=0)
    scale = 1.4826 * np.median(np.abs(x - med), axis=0)
    scale = np.where(scale > 0, scale, np.maximum(x.std(axis=0), 1e-3))
    return med, scale


def displace_1d(
    signal: np.ndarray, mask: np.ndarray, kind: str, rng: np.random.Generator, strength: float = 1.0
) -> tuple[np.ndarray, dict]:
    """Displace ``signal`` ``(n, leads)`` inside ``mask`` ``(n,)`` with one ``kind`` of anomaly.

    Kinds: ``amplitude`` (scale by 0.3-0.6 or 1.6-2.5 about the local median), ``wander`` (add a
    slow Perlin baseline of 1-3 signal scales), ``noise`` (Gaussian burst of 0.3-1 scale),
    ``flat`` (hold the value before the region), ``invert`` (mirror about the local median),
    ``warp`` (resample the region 1.5-2.5x faster or slower), ``paste`` (copy a segment from
    elsewhere). ``strength`` multiplies the size of additive changes. Only masked samples change.
    Returns the new signal (float32) and the drawn parameters.
    """
    x = np.asarray(signal, dtype=np.float32)
    y = x.copy()
    n = len(x)
    runs = components(mask)
    if not runs:
        return y, {}
    med, scale = _stats(x)
    info: dict = {}
    if kind == "amplitude":
        factor = float(rng.choice([rng.uniform(0.3, 0.6), rng.uniform(1.6, 2.5)]))
        y[mask] = med + (x[mask] - med) * factor
        info["factor"] = factor
    elif kind == "wander":
        amp = float(rng.uniform(1.0, 3.0) * strength) * float(rng.choice([-1.0, 1.0]))
        span = runs[-1][1] - runs[0][0]
        shape = 0.6 + 0.4 * perlin_1d(span, rng, 2, max(span / 2.0, 2.0))
        full = np.zeros(n)
        full[runs[0][0] : runs[-1][1]] = shape
        y[mask] = x[mask] + (amp * full[mask])[:, None] * scale
        info["amplitude"] = amp
    elif kind == "noise":
        sigma = float(rng.uniform(0.3, 1.0) * strength)
        y[mask] = x[mask] + rng.normal(0.0, sigma, size=x[mask].shape) * scale
        info["sigma"] = sigma
    elif kind == "flat":
        for a, b in runs:
            y[a:b] = x[a - 1] if a > 0 else x[b if b < n else a]
    elif kind == "invert":
        y[mask] = 2.0 * med - x[mask]
    elif kind == "warp":
        rate = float(rng.choice([rng.uniform(1.5, 2.5), 1.0 / rng.uniform(1.5, 2.5)]))
        for a, b in runs:
            src = a + np.arange(b - a) * rate
            src = np.clip(src, 0, n - 1)
            for lead in range(x.shape[1]):
                y[a:b, lead] = np.interp(src, np.arange(n), x[:, lead])
        info["rate"] = rate
    elif kind == "paste":
        sources = []
        for a, b in runs:
            length = b - a
            choices = np.arange(0, n - length + 1)
            choices = choices[np.abs(choices - a) >= length]
            src = int(rng.choice(choices)) if len(choices) else 0
            y[a:b] = (
                x[src : src + length]
                - np.median(x[src : src + length], axis=0)
                + np.median(x[a:b], axis=0)
            )
            sources.append(src)
        info["sources"] = sources
    else:
        raise ValueError(f"unknown anomaly kind {kind!r}; choose from {', '.join(KINDS_1D)}")
    return y, info


def inject_1d(
    signal: np.ndarray,
    fs: float,
    rng: np.random.Generator,
    kinds: Sequence[str] | None = None,
    min_len_s: float = 0.3,
    max_len_s: float = 2.0,
    roughness: float = 1.0,
    strength: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Inject one Perlin-region anomaly into ``signal`` ``(n, leads)`` sampled at ``fs`` Hz.

    The span is ``min_len_s..max_len_s`` seconds (for series without a rate use ``fs=1`` and give
    lengths in samples); the kind is drawn from ``kinds`` (default all of :data:`KINDS_1D`).
    Returns ``(signal_out float32 (n, leads), mask (n,) bool, info)`` where ``info`` holds the kind,
    the span ``start``/``end`` in samples and the drawn parameters. A 1-D input gives a 1-D output.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(1000, 2))
    >>> y, m, info = inject_1d(x, 100.0, np.random.default_rng(1), kinds=["invert"], min_len_s=1, max_len_s=2)
    >>> y.shape, int(info["end"] - info["start"]) >= 100, bool(np.array_equal(y[~m], x[~m].astype(np.float32)))
    ((1000, 2), True, True)
    """
    x = np.asarray(signal, dtype=np.float32)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[:, None]
    n = len(x)
    kinds = list(kinds or KINDS_1D)
    for k in kinds:
        if k not in KINDS_1D:
            raise ValueError(f"unknown anomaly kind {k!r}; choose from {', '.join(KINDS_1D)}")
    min_len = max(2, int(round(min_len_s * fs)))
    max_len = max(min_len, int(round(max_len_s * fs)))
    if n < 2 * min_len:
        raise ValueError(f"signal of {n} samples is too short for anomalies of {min_len}+ samples")
    max_len = min(max_len, n // 2)
    kind = str(rng.choice(kinds))
    mask, start, end = region_1d(n, rng, min(min_len, max_len), max_len, roughness)
    y, params = displace_1d(x, mask, kind, rng, strength)
    # a displacement may reproduce a value by chance; the mask still marks the written region
    info = {"kind": kind, "start": start, "end": end, "n_masked": int(mask.sum()), **params}
    return (y[:, 0] if squeeze else y), mask, info


def inject_2d(
    image: np.ndarray,
    rng: np.random.Generator,
    kinds: Sequence[str] | None = None,
    min_frac: float = 0.02,
    max_frac: float = 0.15,
    min_delta: float = 1.0,
    max_delta: float = 3.0,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Raise or lower the log-energy of a Perlin region of ``image`` ``(F, T)`` (e.g. a log-spectrogram).

    The region covers ``min_frac..max_frac`` of the image; the change is ``min_delta..max_delta``
    times the image's robust scale (log units), constant inside the region. Returns
    ``(image_out float32, mask (F, T) bool, info)``.

    >>> import numpy as np
    >>> img = np.random.default_rng(0).normal(size=(32, 64))
    >>> out, m, info = inject_2d(img, np.random.default_rng(3), kinds=["raise"])
    >>> bool((out[m] > img[m]).all()), bool(np.array_equal(out[~m], img[~m].astype(np.float32)))
    (True, True)
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"inject_2d needs a (F, T) image, got shape {img.shape}")
    kinds = list(kinds or KINDS_2D)
    for k in kinds:
        if k not in KINDS_2D:
            raise ValueError(f"unknown 2-D anomaly kind {k!r}; choose from {', '.join(KINDS_2D)}")
    kind = str(rng.choice(kinds))
    mask = region_2d(img.shape, rng, min_frac, max_frac)
    _, scale = _stats(img.reshape(-1, 1))
    delta = float(rng.uniform(min_delta, max_delta) * scale[0]) * (1.0 if kind == "raise" else -1.0)
    out = img.copy()
    out[mask] = img[mask] + np.float32(delta)
    return out, mask, {"kind": kind, "delta": delta, "n_masked": int(mask.sum())}


def inject_many(
    signal: np.ndarray,
    fs: float,
    rng: np.random.Generator,
    count: int = 1,
    after: int = 0,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Inject ``count`` non-overlapping anomalies into ``signal`` ``(n, leads)`` after sample ``after``.

    The part after ``after`` is cut into ``count`` equal slices with one anomaly each (keyword
    arguments go to :func:`inject_1d`); the slice offset is added to each event's ``start``/``end``.
    Returns ``(signal_out, mask (n,) bool, events)``.
    """
    x = np.asarray(signal, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    n = len(x)
    if not 0 <= after < n or count < 1:
        raise ValueError(
            f"need 0 <= after < {n} samples and count >= 1 (got after={after}, count={count})"
        )
    y = x.copy()
    mask = np.zeros(n, dtype=bool)
    events = []
    bounds = np.linspace(after, n, count + 1).astype(np.int64)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        part, m, info = inject_1d(x[a:b], fs, rng, **kwargs)
        y[a:b], mask[a:b] = part, m
        info["start"] += int(a)
        info["end"] += int(a)
        events.append(info)
    return y, mask, events
