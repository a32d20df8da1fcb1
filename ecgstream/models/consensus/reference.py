"""The nearest-neighbour reference (generic series): each segment against normal data seen before.

Up to ``reference_size`` segment descriptors of normal data (a coreset, fitted by
:meth:`NearestReference.fit`; ``reference_quantiles`` entries each, optionally followed by the
sorted steps times ``reference_slope_scale``) are stored in the graph, and each segment's
distance to the nearest one is added to its score (weight ``reference_weight``). A single event
in a long series is then measured against everything normal seen before, even when it is the
window's majority.
"""

from __future__ import annotations

import torch
from torch import nn

from ecgstream.models.consensus.config import ConsensusConfig

__all__ = ["NearestReference", "coreset"]


class NearestReference(nn.Module):
    """``forward(level, slope) -> (B, n_segments)``: mean squared distance of each segment's
    descriptors ``(B, L, n_segments, .)`` to its nearest reference row."""

    def __init__(self, cfg: ConsensusConfig):
        super().__init__()
        self.slope_scale, self.dims = cfg.reference_slope_scale, cfg.reference_dims
        n_q = cfg.reference_quantiles or cfg.segment
        q = torch.linspace(0, cfg.segment - 1, n_q).round().long()
        self.register_buffer("index", q, persistent=False)
        q_slope = torch.linspace(0, cfg.segment - 2, n_q).round().long()
        self.register_buffer("slope_index", q_slope, persistent=False)
        dims = cfg.n_leads * cfg.reference_dims
        self.register_buffer("desc", torch.zeros(cfg.reference_size, dims))
        self.register_buffer("norm", torch.zeros(cfg.reference_size))

    def rows(self, level: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        """Descriptors ``(B, L, S, .)`` as reference rows ``(B, S, L * reference_dims)``.

        With ``reference_slope_scale`` the sorted steps (times that scale) follow the values.
        """
        b, leads, n, _ = level.shape
        q = torch.index_select(level, 3, self.index)
        if self.slope_scale > 0:
            steps = torch.index_select(slope, 3, self.slope_index)
            q = torch.cat([q, self.slope_scale * steps], dim=3)
        return q.permute(0, 2, 1, 3).reshape(b, n, leads * self.dims)

    def forward(self, level: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        rows = self.rows(level, slope)
        cross = torch.matmul(rows, self.desc.T)
        dist = (rows**2).sum(-1, keepdim=True) + self.norm - 2 * cross
        return dist.min(-1).values.clamp_min(0) / rows.shape[-1]

    def fit(self, rows: torch.Tensor, seed: int = 0) -> int:
        """Keep up to ``reference_size`` of the descriptor ``rows`` ``(N, D)`` of normal data.

        Exact duplicates are dropped and a greedy farthest-point subset (coreset) kept so rare
        normal shapes stay covered. Returns the number of distinct rows seen.
        """
        size = len(self.desc)
        rows = torch.unique(rows, dim=0)
        chosen = rows[coreset(rows, size, seed)]
        if len(chosen) < size:  # repeat rows: the minimum distance is unchanged
            chosen = chosen[torch.arange(size) % len(chosen)]
        self.desc.copy_(chosen)
        self.norm.copy_((chosen**2).sum(1))
        return len(rows)


def coreset(rows: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices of a greedy farthest-point subset of ``rows`` ``(N, D)``, at most ``size``."""
    n = len(rows)
    if n <= size:
        return torch.arange(n)
    if n > 50 * size:  # bound the fitting time on very long series
        pool = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: 50 * size]
        return pool[coreset(rows[pool], size, seed)]
    x = rows.to(torch.float64)
    norm = (x**2).sum(1)
    chosen = [int(torch.argmin(((x - x.median(0).values) ** 2).sum(1)))]
    dist = torch.full((n,), float("inf"), dtype=torch.float64)
    for _ in range(size - 1):
        last = chosen[-1]
        dist = torch.minimum(dist, (norm + norm[last] - 2 * x @ x[last]).clamp_min(0))
        chosen.append(int(torch.argmax(dist)))
    return torch.tensor(chosen)
