"""Score calibration on validation normals: robust centre/scale and false-alarm thresholds.

Calibrated score = ``(raw - center) / scale`` with ``center`` the median and ``scale`` the
normal-consistent MAD (1.4826 x median absolute deviation) of raw window scores of normal
validation windows. Thresholds are quantiles of the calibrated normal scores, so a threshold
``warning`` = p99 means about 1 % of normal windows reach it.

>>> import numpy as np
>>> norm, thr = calibrate(np.random.default_rng(0).normal(5.0, 2.0, 20000))
>>> round(norm["center"], 1), round(norm["scale"], 1), round(thr["warning"], 1)
(5.0, 2.0, 2.3)
"""

from __future__ import annotations

import numpy as np

__all__ = ["calibrate"]


def calibrate(normal_scores: np.ndarray, false_alarm: float = 0.01) -> tuple[dict, dict]:
    """``score_norm`` and ``thresholds`` (calibrated units) from raw normal window scores.

    ``false_alarm`` is the fraction of normal windows allowed over the ``default`` threshold.
    """
    s = np.asarray(normal_scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < 10:
        raise ValueError(f"need at least 10 normal validation windows to calibrate, got {s.size}")
    center = float(np.median(s))
    scale = float(1.4826 * np.median(np.abs(s - center)))
    if not scale > 0:
        scale = float(np.std(s)) or 1.0
    z = (s - center) / scale
    thresholds = {
        "default": float(np.quantile(z, 1.0 - false_alarm)),
        "warning": float(np.quantile(z, 0.99)),
        "critical": float(np.quantile(z, 0.999)),
    }
    return {"center": center, "scale": scale, "n": int(s.size)}, thresholds
