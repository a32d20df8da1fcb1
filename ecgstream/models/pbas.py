"""PBAS-style head (after Chen et al., progressive boundary-guided anomaly synthesis): the cheapest head.

On the frozen tokens, a linear feature adaptor maps tokens into a space where normal tokens
cluster around a few learned **normal centres** (k-means initialised). Anomalous features are
**synthesised at the feature level**: a normal feature is pushed outward from its nearest centre
to just beyond the current normal **boundary** (a high quantile of normal distances) by a
margin that shrinks over training (progressive: easy far negatives first, then near ones), plus
isotropic Gaussian perturbations. A small MLP **discriminator** learns normal vs synthetic.

Score of a token = softplus(discriminator logit) + distance to the nearest centre in boundary units, so a
token that is far from every normal centre is anomalous even where the discriminator saturates.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["PBASHead", "kmeans"]


@torch.no_grad()
def kmeans(
    x: torch.Tensor, k: int, iters: int = 20, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``k`` centres ``(k, D)`` of points ``x`` ``(n, D)`` (Lloyd's algorithm, k-means++ seeding)."""
    n = x.shape[0]
    k = min(k, n)
    centres = [x[torch.randint(n, (1,), generator=generator)].squeeze(0)]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum().clamp_min(1e-12)
        centres.append(x[torch.multinomial(probs, 1, generator=generator)].squeeze(0))
        d2 = torch.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return c


class PBASHead(nn.Module):
    """Adaptor + normal centres + boundary-guided feature synthesis + discriminator.

    ``n_centres`` normal centres; ``quantile`` of normal distances defines the boundary radius;
    ``margin`` (in boundary units) is how far beyond the boundary synthetic features start.
    """

    def __init__(
        self,
        feat_dim: int,
        n_centres: int = 16,
        hidden: int = 64,
        quantile: float = 0.95,
        margin: float = 0.5,
    ):
        super().__init__()
        self.adaptor = nn.Linear(feat_dim, feat_dim)
        nn.init.eye_(self.adaptor.weight)
        nn.init.zeros_(self.adaptor.bias)
        self.disc = nn.Sequential(
            nn.Linear(feat_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)
        )
        self.register_buffer("centres", torch.zeros(n_centres, feat_dim))
        self.register_buffer("radius", torch.ones(()))
        self.quantile, self.margin = quantile, margin

    def distance(self, feats: torch.Tensor) -> torch.Tensor:
        """Distance of adapted features ``(..., D)`` to their nearest centre, ``(...)``."""
        flat = feats.reshape(-1, feats.shape[-1])
        d2 = (
            (flat * flat).sum(1, keepdim=True)
            - 2 * flat @ self.centres.T
            + (self.centres * self.centres).sum(1)[None]
        )
        return (d2.clamp_min(0).min(1).values + 1e-8).sqrt().reshape(feats.shape[:-1])

    @torch.no_grad()
    def fit_centres(
        self, tokens: torch.Tensor, generator: torch.Generator | None = None, iters: int = 10
    ) -> None:
        """(Re)place the centres on adapted normal tokens ``(n, D)`` and update the boundary radius.

        ``iters=0`` takes a random subset of the tokens as centres (a coreset memory, as in
        PatchCore), which keeps fine detail when there are many centres.
        """
        feats = self.adaptor(tokens)
        k = self.centres.shape[0]
        if iters == 0 or k >= len(feats) // 4:
            pick = torch.randperm(len(feats), generator=generator)[:k]
            self.centres.copy_(feats[pick])
        else:
            self.centres.copy_(kmeans(feats, k, iters=iters, generator=generator))
        self.radius.copy_(
            torch.quantile(self.distance(feats)[:50000], self.quantile).clamp_min(1e-4)
        )

    def synthesise(
        self, feats: torch.Tensor, margin: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Synthetic anomalous features from normal adapted features ``(n, D)``.

        Half are pushed radially from their nearest centre to ``radius * (1 + margin * U(0.5, 2))``;
        half get isotropic noise of that norm.
        """
        n, dim = feats.shape
        nearest = self.centres[torch.cdist(feats, self.centres).argmin(1)]
        direction = feats - nearest
        direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-6)
        dist = self.radius * (1 + margin * (0.5 + 1.5 * torch.rand(n, 1, generator=generator)))
        radial = nearest + direction * dist
        noise = torch.randn(n, dim, generator=generator)
        noisy = feats + noise / noise.norm(dim=1, keepdim=True) * dist
        half = n // 2
        return torch.cat([radial[:half], noisy[half:]])

    def loss(
        self, tokens: torch.Tensor, progress: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Discriminator + boundary loss on a batch of normal tokens ``(n, D)``; ``progress`` in [0, 1]."""
        feats = self.adaptor(tokens)
        margin = self.margin * (2.0 - 1.5 * progress)  # progressive: far negatives first, then near
        fake = self.synthesise(feats.detach(), margin, generator)
        logits = self.disc(torch.cat([feats, fake]))[:, 0]
        target = torch.cat([torch.zeros(len(feats)), torch.ones(len(fake))])
        bce = F.binary_cross_entropy_with_logits(logits, target)
        boundary = F.relu(self.distance(feats) / self.radius - 1.0).mean()
        return bce + 0.1 * boundary

    def score_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token score ``(B, N)`` (>= 0): softplus of the discriminator logit plus distance in boundary units."""
        feats = self.adaptor(tokens)
        return F.softplus(self.disc(feats)[..., 0]) + self.distance(feats) / self.radius
