"""UniAD-style reconstruction of frozen tokens (You et al., NeurIPS 2022), on the shared core.

The tokens of the frozen :class:`~ecgstream.models.encoder.PatchEncoder` are reconstructed by the
shared token core (:mod:`ecgstream.models.token_core`): an encoder whose self-attention is
neighbour-masked (a token may not attend to its own neighbourhood) and a
:class:`~ecgstream.models.token_core.QueryDecoder` with per-layer learned queries, also
neighbour-masked. Training adds feature jitter (Gaussian noise on the input tokens, clean
targets), so the network learns to pull tokens back to the normal manifold instead of copying
them: the "identical shortcut" that makes plain autoencoders reconstruct anomalies too.

Score of a token = squared residual of its reconstruction (mean over features).
"""

from __future__ import annotations

import torch
from torch import nn

from ecgstream.models.token_core import QueryDecoder, TokenCore, neighbour_mask, residual_score

__all__ = ["UniADHead"]


class UniADHead(nn.Module):
    """Neighbour-masked token reconstruction with per-layer queries and feature jitter.

    ``feat_dim`` is the token width of the encoder, ``grid`` its ``(rows, cols)`` token grid,
    ``dim`` the transformer width, ``radius`` the neighbourhood (in tokens) hidden from each token,
    ``jitter`` the noise scale of feature jitter relative to the (standardised) token scale.
    """

    def __init__(
        self,
        feat_dim: int,
        grid: tuple[int, int],
        dim: int = 64,
        depth: int = 1,
        decoder_depth: int = 2,
        heads: int = 4,
        radius: int = 1,
        jitter: float = 0.2,
    ):
        super().__init__()
        self.grid, self.jitter = tuple(grid), jitter
        n = grid[0] * grid[1]
        self.inp = nn.Linear(feat_dim, dim)
        self.pos = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        self.core = TokenCore(dim, depth=depth, heads=heads, decoder_depth=0)
        self.decoder = QueryDecoder(dim, n, depth=decoder_depth, heads=heads)
        self.out = nn.Linear(dim, feat_dim)
        self.register_buffer("near", neighbour_mask(self.grid, radius))

    def reconstruct(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, N, D)`` -> reconstruction ``(B, N, D)``."""
        memory = self.core.encode(self.inp(tokens) + self.pos, mask=self.near)
        return self.out(self.decoder(memory, mask=self.near))

    def score_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token anomaly score ``(B, N)``: squared reconstruction residual."""
        return residual_score(self.reconstruct(tokens), tokens)

    def loss(self, tokens: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruction loss with feature jitter on normal tokens ``(B, N, D)``."""
        noise = torch.randn(tokens.shape, generator=generator) * self.jitter
        return residual_score(self.reconstruct(tokens + noise), tokens).mean()
