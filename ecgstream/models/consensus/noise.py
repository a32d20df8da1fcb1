"""The noise-floor term: each segment's smallest sample-to-sample steps against the window's.

QRS slopes sit in a segment's largest absolute steps; the rest is its noise floor, which a
burst of noise or interference raises without changing the amplitude distribution much. The
floor is the sorted smallest ``noise_quantile`` of the |steps|; the term is its mean squared
distance to the window's median floor (weight ``noise_weight``). With ``noise_every`` k > 1 the
floors of every k-th segment are compared (k times less sorting) and the term is interpolated
linearly to the segments between them.
"""

from __future__ import annotations

import torch
from torch import nn

from ecgstream.models.consensus.config import ConsensusConfig
from ecgstream.models.consensus.descriptor import deviation, grid, median_over_segments

__all__ = ["NoiseTerm", "noise_keep"]


def noise_keep(cfg: ConsensusConfig) -> int:
    """How many of a segment's ``segment - 1`` steps its noise floor keeps (the smallest)."""
    return max(1, int((cfg.segment - 1) * cfg.noise_quantile))


class NoiseTerm(nn.Module):
    """:meth:`floors` of segments and the :meth:`forward` term ``(B, n_segments)`` from them."""

    def __init__(self, cfg: ConsensusConfig):
        super().__init__()
        self.every, self.keep = cfg.noise_every, noise_keep(cfg)
        names = ("sub", "left", "right", "frac")
        for name, value in zip(names, grid(cfg.n_segments, cfg.noise_every), strict=True):
            self.register_buffer(name, value, persistent=False)

    def floor(self, seg: torch.Tensor) -> torch.Tensor:
        """The smallest ``noise_quantile`` of each segment's absolute steps, sorted,
        ``(B, L, n, keep)`` from segments ``(B, L, n, segment)``."""
        steps = (seg[..., 1:] - seg[..., :-1]).abs()
        return torch.topk(steps, self.keep, dim=-1, largest=False, sorted=True).values

    def floors(self, seg: torch.Tensor) -> torch.Tensor:
        """The noise floors of every ``noise_every``-th segment of ``seg``."""
        if self.every == 1:
            return self.floor(seg)
        return self.floor(seg.index_select(2, self.sub))

    def forward(self, floor: torch.Tensor, median: torch.Tensor | None = None) -> torch.Tensor:
        """The term from the floors of every ``noise_every``-th segment (and their ``median``
        over the segments, when it is computed outside the graph)."""
        if median is None:
            median = median_over_segments(floor, floor.shape[2])
        dev = deviation(floor, median)
        if self.every == 1:
            return dev
        left, right = dev.index_select(1, self.left), dev.index_select(1, self.right)
        return left + self.frac * (right - left)
