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

from ecgstream.models.token_core import NeighbourQueryHead, residual_score

__all__ = ["UniADHead"]


class UniADHead(NeighbourQueryHead):
    """Neighbour-masked token reconstruction with per-layer queries and feature jitter.

    Arguments as :class:`~ecgstream.models.token_core.NeighbourQueryHead` (``feat_dim``,
    ``grid``, ``dim``, ``depth``, ``decoder_depth``, ``heads``, ``radius``, ``jitter``).
    """

    def reconstruct(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, N, D)`` -> reconstruction ``(B, N, D)``."""
        return self.out(self.decoder(self.encode(tokens), mask=self.near))

    def score_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token anomaly score ``(B, N)``: squared reconstruction residual."""
        return residual_score(self.reconstruct(tokens), tokens)

    def loss(self, tokens: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruction loss with feature jitter on normal tokens ``(B, N, D)``."""
        noise = torch.randn(tokens.shape, generator=generator) * self.jitter
        return residual_score(self.reconstruct(tokens + noise), tokens).mean()
