"""OneNIP-style head (after Gao et al.): reconstruction prompted by one normal reference, plus a refiner.

The frozen tokens of a window are reconstructed by per-layer learned queries
(:class:`~ecgstream.models.token_core.QueryDecoder`, the shared core) that attend to

- the window's own tokens, neighbour-masked (a query never sees its own neighbourhood), and
- a **normal prompt** of the same stream: the enrolment window (the most typical normal window
  of the training data, stored in the model) and the window's own per-row temporal median
  token (a running-median reference that follows the stream's current rhythm and gain).

Training has two streams: **reconstruction** of normal tokens (with feature jitter) and
**restoration** of tokens of Perlin-corrupted windows back to their clean tokens. A small
convolutional **refiner**, trained on the same synthetic anomalies with their exact masks, turns
the residual map and the distances to the prompt into a per-token anomaly logit.

Score of a token = softplus(refiner logit) + reconstruction residual (in units of its normal median).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ecgstream.models.token_core import NeighbourQueryHead, residual_score

__all__ = ["OneNIPHead"]


class OneNIPHead(NeighbourQueryHead):
    """Prompted token reconstruction with a restoration stream and a refiner.

    Arguments as :class:`~ecgstream.models.token_core.NeighbourQueryHead` (``feat_dim``,
    ``grid``, ``dim``, ``depth``, ``decoder_depth``, ``heads``, ``radius``, ``jitter``).
    """

    prompt = True

    def __init__(self, feat_dim: int, grid: tuple[int, int], *args: Any, **kwargs: Any):
        super().__init__(feat_dim, grid, *args, **kwargs)
        rows, cols = self.grid
        n = rows * cols
        free = torch.zeros(n, 2 * n + rows, dtype=torch.bool)  # [own tokens, enrolment, medians]
        free[:, :n] = self.near
        self.register_buffer("memory_mask", free)
        self.register_buffer("enrol", torch.zeros(1, n, feat_dim))
        self.register_buffer("residual_scale", torch.ones(()))
        self.refiner = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(16, 1, 1),
        )

    def row_median(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-row temporal median token ``(B, rows, D)`` of tokens ``(B, N, D)``."""
        rows, cols = self.grid
        grid = tokens.reshape(tokens.shape[0], rows, cols, -1)
        return grid.sort(dim=2).values[:, :, cols // 2]

    def reconstruct(
        self, tokens: torch.Tensor, clean_reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reconstruct tokens ``(B, N, D)`` from themselves (neighbour-masked) and the normal prompt."""
        reference = tokens if clean_reference is None else clean_reference
        enrol = self.inp(self.enrol) + self.pos + self.prompt_type  # (1, N, dim)
        median = self.inp(self.row_median(reference)) + self.prompt_type  # (B, rows, dim)
        memory = torch.cat([self.encode(tokens), enrol.expand(tokens.shape[0], -1, -1), median], 1)
        return self.out(self.decoder(memory, mask=self.memory_mask))

    def _refiner_input(self, tokens: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
        rows, cols = self.grid
        b = tokens.shape[0]
        residual = residual_score(rec, tokens) / self.residual_scale
        to_enrol = residual_score(tokens, self.enrol)
        med = self.row_median(tokens)  # (B, rows, D)
        to_median = residual_score(tokens.reshape(b, rows, cols, -1), med[:, :, None, :]).reshape(
            b, -1
        )
        feats = torch.stack(
            [residual, to_enrol / tokens.shape[-1] ** 0.5, to_median / tokens.shape[-1] ** 0.5], 1
        )
        return feats.reshape(b, 3, rows, cols)

    def score_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token score ``(B, N)`` (>= 0): softplus of the refiner logit plus the normalised reconstruction residual."""
        rec = self.reconstruct(tokens)
        x = self._refiner_input(tokens, rec)
        return F.softplus(self.refiner(x).flatten(1)) + x[:, 0].flatten(1)

    def loss(
        self,
        clean: torch.Tensor,
        corrupted: torch.Tensor,
        token_mask: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Reconstruction + restoration + refiner loss.

        ``clean`` normal tokens ``(B, N, D)``; ``corrupted`` the tokens of the same windows with a
        Perlin anomaly; ``token_mask`` ``(B, N)`` float, 1 where the anomaly touches a token.
        """
        noise = torch.randn(clean.shape, generator=generator) * self.jitter
        rec_clean = self.reconstruct(clean + noise)
        rec_bad = self.reconstruct(corrupted)
        recon = residual_score(rec_clean, clean).mean() + residual_score(rec_bad, clean).mean()
        both = torch.cat([clean, corrupted])
        rec_both = torch.cat([rec_clean, rec_bad]).detach()
        logits = self.refiner(self._refiner_input(both, rec_both)).flatten(1)
        target = torch.cat([torch.zeros_like(token_mask), token_mask])
        pos_weight = ((1 - target).sum() / target.sum().clamp_min(1.0)).clamp(1.0, 20.0)
        refine = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
        return recon + refine
