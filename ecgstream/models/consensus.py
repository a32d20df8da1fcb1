"""In-window consensus detector: each part of a window against the window's own typical beat.

ECG repeats itself. Inside one window (10 s, about ten beats) the typical cycle of *this*
patient is known from the window itself, so a part that differs from it is anomalous no matter
how the patient differs from other patients. This is the per-stream reference that
cross-patient detection needs (see ``docs/model-consensus.md``), computed without R-peak
detection:

1. **Sliding segments.** Every ``stride`` samples a segment of ``segment`` samples (about one
   beat, 0.8 s at 100 Hz) is cut from each lead.
2. **Shift-invariant descriptor.** Each segment minus its median, sorted: the segment's
   amplitude distribution (quantile function) in mV. It does not depend on where inside the
   segment a beat falls, so segments taken at any phase of the cardiac cycle are comparable;
   it keeps amplitude, width (how many samples are far from the baseline) and polarity.
3. **Consensus.** The element-wise median of the descriptors of all segments of the window:
   the window's typical segment, robust to a minority of abnormal beats.
4. **Score.** Mean squared difference (mV^2, averaged over leads and descriptor entries) between a
   segment's descriptor and the consensus, placed at the segment's centre and interpolated
   linearly to every sample: ``point_score`` ``(B, window)``. ``window_score`` ``(B,)`` is the
   mean of the top ``topk_frac`` point scores.

A premature beat makes the segments around it hold two QRS complexes instead of one, a
ventricular beat a wider and taller one, a flat line none: all move the descriptor away from the
consensus. What it cannot see is an abnormality present in every beat of the window (the
consensus then is abnormal too); that needs a population reference.

The graph is parameter-free: segment indices, the interpolation matrix and the median are fixed
buffers and sorts, so it exports to ONNX like the learned models and streams the same way.

>>> import torch
>>> model = SegmentConsensus(ConsensusConfig(n_leads=1, window=400, segment=40, stride=5))
>>> point, window = model(torch.randn(2, 1, 400))
>>> tuple(point.shape), tuple(window.shape)
((2, 400), (2,))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ConsensusConfig", "SegmentConsensus"]


@dataclass
class ConsensusConfig:
    """Sizes in samples at the model rate: ``segment`` (about one beat) and ``stride`` between segments."""

    n_leads: int = 1
    window: int = 1000
    segment: int = 80
    stride: int = 5
    slope_weight: float = 0.0
    topk_frac: float = 0.1

    @property
    def n_segments(self) -> int:
        return (self.window - self.segment) // self.stride + 1

    def validate(self) -> None:
        if not 2 <= self.segment <= self.window:
            raise ValueError(f"segment {self.segment} must be in [2, window={self.window}] samples")
        if self.stride < 1:
            raise ValueError(f"stride must be at least 1 sample, got {self.stride}")
        if self.n_segments < 3:
            raise ValueError(
                f"window {self.window} holds only {self.n_segments} segments of {self.segment} "
                f"samples every {self.stride}; the consensus needs at least 3"
            )
        if self.slope_weight < 0:
            raise ValueError(f"slope_weight must be >= 0, got {self.slope_weight}")
        if not 0 < self.topk_frac <= 1:
            raise ValueError(f"topk_frac must be in (0, 1], got {self.topk_frac}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ConsensusConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class SegmentConsensus(nn.Module):
    """``forward(windows (B, L, T)) -> (point_score (B, T), window_score (B,))``; no trained weights."""

    def __init__(self, cfg: ConsensusConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        starts = torch.arange(cfg.n_segments) * cfg.stride
        index = starts[:, None] + torch.arange(cfg.segment)[None]
        self.register_buffer("index", index.reshape(-1), persistent=False)

    def descriptors(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted, median-centred segments and sorted sample-to-sample steps, ``(B, L, n_segments, .)``."""
        b, leads, _ = windows.shape
        cfg = self.cfg
        seg = torch.index_select(windows, 2, self.index).reshape(b, leads, cfg.n_segments, -1)
        ordered = torch.sort(seg, dim=-1).values
        level = ordered - ordered[..., cfg.segment // 2 : cfg.segment // 2 + 1]
        slope = torch.sort(seg[..., 1:] - seg[..., :-1], dim=-1).values
        return level, slope

    def _spread(self, seg_score: torch.Tensor) -> torch.Tensor:
        """Segment scores ``(B, n_segments)`` at their centres, linearly interpolated to ``(B, T)``."""
        cfg = self.cfg
        inner = (cfg.n_segments - 1) * cfg.stride + 1
        line = F.interpolate(seg_score[:, None], size=inner, mode="linear", align_corners=True)
        left = cfg.segment // 2
        return F.pad(line, (left, cfg.window - inner - left), mode="replicate")[:, 0]

    def _deviation(self, desc: torch.Tensor) -> torch.Tensor:
        """Mean squared distance ``(B, n_segments)`` of each descriptor to the window's median one."""
        middle = self.cfg.n_segments // 2
        consensus = torch.sort(desc, dim=2).values[:, :, middle : middle + 1]
        return ((desc - consensus) ** 2).mean(dim=(1, 3))

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic scores of windows ``(B, L, T)``: point ``(B, T)`` and window ``(B,)``."""
        cfg = self.cfg
        level, slope = self.descriptors(windows)
        seg_score = self._deviation(level)
        if cfg.slope_weight > 0:
            seg_score = seg_score + cfg.slope_weight * self._deviation(slope)
        point = self._spread(seg_score)
        top = max(1, int(round(cfg.topk_frac * cfg.window)))
        window = torch.topk(point, top, dim=1).values.mean(1)
        return point, window
