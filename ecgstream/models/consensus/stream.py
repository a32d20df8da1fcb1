"""The torch side of the stream step: a window's scores from sorts it shares with the previous one.

A window ``hop`` samples after another starts ``hop / stride`` segments later: its first
``carry`` segments are the previous window's last ones (the same samples), so their sorted
values and noise floors can be handed over instead of sorted again. :func:`stream_layout` says
how (the keys the model file stores, :data:`ecgstream.runtime.model_file.STREAM_LAYOUT_KEYS`);
:class:`StreamStep` is the graph exported beside the main one. The sorts of the new segments and
the window's two medians are computed outside the graph (:mod:`ecgstream.runtime.stepping.sorts`:
numpy sorts and selects several times faster than ONNX Runtime's ``TopK``).
"""

from __future__ import annotations

import torch
from torch import nn

from ecgstream.models.consensus.noise import noise_keep

__all__ = ["StreamStep", "stream_layout"]


def stream_layout(model, hop: int) -> dict | None:
    """How a window ``hop`` samples after another of ``model`` (a
    :class:`~ecgstream.models.consensus.SegmentConsensus`) reuses that window's sorts, or None.

    Only for the terms :class:`StreamStep` computes: the sorted descriptor and the noise floor,
    with floors of segments the shift keeps on their grid (and the rhythm term, which needs no
    sort and takes the whole window).
    """
    cfg = model.cfg
    if hop <= 0 or hop % cfg.stride or cfg.noise_weight <= 0:
        return None
    shift = hop // cfg.stride  # segments the next window starts later
    carry = cfg.n_segments - shift
    k = cfg.noise_every
    other_terms = cfg.reference_size > 0 or cfg.population_components > 0
    if carry <= 0 or shift % k or other_terms:
        return None
    carry_floors = -(-carry // k)  # grid segments 0, k, 2k, ... below carry
    floor_offset = (-carry) % k  # first grid segment among the new ones
    keep = noise_keep(cfg)
    return {
        "carry": carry,
        "carry_floors": carry_floors,
        "span": cfg.window - carry * cfg.stride,
        "floor_offset": floor_offset,
        "segment": cfg.segment,
        "floor_width": keep,
        "stride": cfg.stride,
        "new": shift,
        "new_floors": len(range(floor_offset, shift, k)),
        "floor_every": k,
        "noise_keep": keep,
        # the floors are sorted; 1 was a mean of them (a removed switch), still read by runtimes
        "floor_mean": 0,
        "level_every": cfg.level_every,
        # the step takes the whole window (the rhythm term)
        "rhythm": int(cfg.rhythm_weight > 0),
    }


class StreamStep(nn.Module):
    """A window's scores from the sorts of its new segments and the sorts it shares with the
    previous window (:func:`stream_layout`).

    Inputs: the sorted values ``(B, L, new, segment)`` and noise floors
    ``(B, L, new_floors, floor_width)`` of the window's ``new`` last segments, the previous
    window's last ``carry`` sorted segments ``(B, L, carry, segment)`` and floors
    ``(B, L, carry_floors, floor_width)``, and the window's two medians over its segments: the
    consensus ``(B, L, 1, segment)`` and the consensus floor ``(B, L, 1, floor_width)``; with
    the rhythm term also the whole window ``(B, L, window)``, which that term compares with
    itself (it needs no sort, so nothing of it is carried).
    Outputs: point and window scores, equal to the model's on the whole window. What the next
    window takes over is the tail of the new sorts.
    """

    def __init__(self, model, layout: dict):
        super().__init__()
        self.model = model
        self.layout = layout

    def forward(
        self,
        sorted_new: torch.Tensor,
        floors_new: torch.Tensor,
        carried: torch.Tensor,
        carried_floors: torch.Tensor,
        consensus: torch.Tensor,
        floor_consensus: torch.Tensor,
        windows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        ordered = torch.cat([carried, sorted_new], dim=2)
        floors = torch.cat([carried_floors, floors_new], dim=2)
        seg_score = m.sorted_terms(ordered, floors, consensus, floor_consensus)[0]
        seg_score = m.with_rhythm(seg_score, windows)
        return m.outputs(m.spread(seg_score), seg_score, ordered)
