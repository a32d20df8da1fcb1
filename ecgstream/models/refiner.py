"""Score refiner: a small learned convolution that says where in a window an anomaly lies.

The consensus detector (:mod:`ecgstream.models.consensus`) scores each segment of a window on
its own. Its score trace holds more than each value says: an anomaly shows as a bump with edges
of a certain shape, real baseline movement as a drift of the segment levels. The refiner reads
the trace of a window's segment scores (their logarithm) and each segment's median level (mV),
and gives a logit per segment that an anomaly covers it. It is trained on synthetic anomalies
(:mod:`ecgstream.signals.synth`) injected into the training records
(:mod:`ecgstream.training.refiner`), the positives for a refiner head that the design names.

The refined segment score is the segment score times ``max(exp(weight * (logit - floor)), 1)``:
raised where the refiner sees an anomaly, never lowered. The window score (detection,
thresholds) stays the detector's own; only where the score lies within a window (localisation,
the point scores) changes. Its settings are ``refiner_*`` fields of
:class:`~ecgstream.models.consensus.ConsensusConfig`, which validates them.

>>> import torch
>>> r = ScoreRefiner(n_leads=1, channels=4, dilations=(1, 2))
>>> score, level = torch.rand(2, 93), torch.randn(2, 1, 93) * 0.1
>>> out = r(score, level)
>>> tuple(out.shape), bool((out >= score).all())
((2, 93), True)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ScoreRefiner"]

#: added to segment scores (raw units, about mV^2) before the logarithm, so a zero score is finite
LOG_OFFSET = 1e-3


class ScoreRefiner(nn.Module):
    """Dilated residual 1-D convolutions over a window's segments (same length in and out).

    ``channels`` wide, one layer per entry of ``dilations`` (an odd ``kernel``), so it sees
    ``1 + (kernel - 1) * sum(dilations)`` segments around each one. ``level_scale`` brings the
    levels (mV) to about unit size.
    """

    def __init__(
        self,
        n_leads: int,
        channels: int = 16,
        dilations: tuple[int, ...] = (1, 2, 4, 8),
        kernel: int = 3,
        weight: float = 0.5,
        floor: float = -6.0,
        level_scale: float = 5.0,
    ):
        super().__init__()
        self.weight, self.floor, self.level_scale = float(weight), float(floor), float(level_scale)
        self.inp = nn.Conv1d(1 + n_leads, channels, 1)
        self.blocks = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=d * (kernel // 2), dilation=d)
            for d in dilations
        )
        self.out = nn.Conv1d(channels, 1, 1)

    def features(self, seg_score: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + L, S)``: log segment scores ``(B, S)`` and scaled levels ``(B, L, S)``."""
        log_score = torch.log(seg_score.clamp_min(0) + LOG_OFFSET)[:, None]
        return torch.cat([log_score, level * self.level_scale], dim=1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Per-segment logits ``(B, S)`` that a synthetic-style anomaly covers the segment."""
        h = torch.relu(self.inp(features))
        for block in self.blocks:
            h = h + torch.relu(block(h))
        return self.out(h)[:, 0]

    def forward(self, seg_score: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Refined segment scores ``(B, S)``: ``seg_score`` raised where the logits are high."""
        logit = self.logits(self.features(seg_score, level))
        gain = torch.exp(self.weight * (logit - self.floor))
        return seg_score.clamp_min(0) * gain.clamp_min(1.0)
