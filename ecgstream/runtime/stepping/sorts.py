"""The sorts and medians of a consensus model's stream step, computed with numpy.

A window's stream step (``StreamStep`` in :mod:`ecgstream.models.consensus`) needs the sorted
values and noise floors of the segments the window does not share with its previous window,
and the window's medians over its segments (the consensus and the consensus noise floor).
Sorting and selecting is nearly all of that graph's time in ONNX Runtime, whose only sort is
``TopK``: 160 us for a window's 50 new 80-sample segments, against about 7 us for
``numpy.sort``, and 96 us for the two medians, against about 15 us for ``numpy.partition``.
So ``ecgstream run`` computes them here and the graph does the rest.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["segment_sorts", "window_medians", "next_carry"]


def segment_sorts(span: np.ndarray, layout: dict) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values ``(n, leads, new, segment)`` and noise floors
    ``(n, leads, new_floors, floor_width)`` of the ``new`` segments of ``span``
    ``(n, leads, span)``: a window's last ``span`` samples (the model rate).

    Segments are ``segment`` samples every ``stride``; a noise floor is the ``noise_keep``
    smallest absolute sample-to-sample steps of every ``floor_every``-th segment from
    ``floor_offset`` on, sorted (or their mean, with ``floor_mean``): the same values as the
    model's graph computes.
    """
    lay = layout
    seg = sliding_window_view(span, lay["segment"], axis=-1)[:, :, :: lay["stride"]]
    seg = seg[:, :, : lay["new"]]
    ordered = np.sort(seg, axis=-1)
    sub = seg[:, :, lay["floor_offset"] :: lay["floor_every"]]
    floors = np.sort(np.abs(np.diff(sub, axis=-1)), axis=-1)[..., : lay["noise_keep"]]
    if lay["floor_mean"]:
        floors = floors.mean(axis=-1, keepdims=True, dtype=np.float32)
    return ordered, floors


def window_medians(
    carried: np.ndarray,
    ordered: np.ndarray,
    carried_floors: np.ndarray,
    floors: np.ndarray,
    layout: dict,
) -> tuple[np.ndarray, np.ndarray]:
    """The window's consensus ``(n, leads, 1, segment)`` and consensus noise floor
    ``(n, leads, 1, floor_width)``: element-wise medians over the window's segments.

    The window's sorted segments are the previous window's ``carried`` ones and the new
    ``ordered`` ones (:func:`segment_sorts`), its floors ``carried_floors`` and ``floors``. The
    consensus is taken over every ``level_every``-th segment, each minus its median; of an even
    count, the upper middle value. The same values as the model's graph selects.
    """
    every, mid = layout["level_every"], layout["segment"] // 2
    first = (-carried.shape[2]) % every  # the first new segment on the every-th grid
    level = np.concatenate([carried[:, :, ::every], ordered[:, :, first::every]], axis=2)
    level -= level[..., mid : mid + 1]
    return _median(level), _median(np.concatenate([carried_floors, floors], axis=2))


def _median(x: np.ndarray) -> np.ndarray:
    """The ``(count // 2)``-th smallest of ``x`` ``(n, leads, count, width)`` along ``count``."""
    k = x.shape[2] // 2
    along = x.transpose(0, 1, 3, 2).copy()  # numpy selects faster along a contiguous axis
    along.partition(k, axis=-1)
    return along[..., k][:, :, None, :].copy()


def next_carry(
    ordered: np.ndarray, floors: np.ndarray, layout: dict
) -> tuple[np.ndarray, np.ndarray]:
    """What the window one hop later takes over from :func:`segment_sorts`' output: the last
    ``carry`` sorted segments and ``carry_floors`` floors."""
    return ordered[:, :, -layout["carry"] :], floors[:, :, -layout["carry_floors"] :]
