"""The population reference: how far a window's typical segment is from normal windows of others.

The in-window consensus cannot see an abnormality present in every beat (infarction, bundle
branch block, hypertrophy in a 12-lead resting ECG): the consensus is then abnormal too. The
population reference compares the window's consensus descriptor (and optionally its band
spectrum, :mod:`~ecgstream.models.consensus.spectrum`) with those of normal training windows of
other people, as a Gaussian: ``pca`` (the top ``population_components`` principal directions and
the residual outside them) or ``shrunk`` (the Ledoit-Wolf shrunk covariance, a Mahalanobis
distance). Both are relative to the median training distance, so a typical normal window scores
about 1. With ``population_lead_scale`` each lead is first divided by its training spread, so
tall precordial leads do not dominate.
"""

from __future__ import annotations

import torch
from torch import nn

from ecgstream.models.consensus.config import ConsensusConfig
from ecgstream.models.consensus.spectrum import BandSpectrum

__all__ = ["GaussianReference", "PopulationReference", "fit_gaussian", "ledoit_wolf", "lead_scale"]


def lead_scale(x: torch.Tensor, n_leads: int) -> torch.Tensor:
    """Each lead's RMS deviation from the mean over rows ``(N, L * D)``, repeated per entry."""
    dev = (x - x.mean(0)).reshape(len(x), n_leads, -1)
    rms = (dev**2).mean(dim=(0, 2)).sqrt().clamp_min(1e-9)
    return rms.repeat_interleave(dev.shape[2])


def ledoit_wolf(z: torch.Tensor) -> float:
    """Ledoit-Wolf shrinkage intensity of centred rows ``z`` ``(N, D)`` towards a scaled identity.

    The same estimate as scikit-learn's ``ledoit_wolf_shrinkage``, computed with the ``N x N``
    Gram matrix since N is far below D here.
    """
    n, d = z.shape
    z2 = z**2
    trace = z2.sum() / n
    mu = trace / d
    beta_ = (z2.sum(1) ** 2).sum()
    delta_ = ((z @ z.T) ** 2).sum() / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * trace + d * mu**2) / d
    beta = torch.minimum(beta, delta)
    return 0.0 if float(beta) <= 0 else float(beta / delta)


def fit_gaussian(
    x: torch.Tensor, k: int, shrunk: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, basis (k, D), sd (k,), residual)`` of rows ``x`` ``(N, D)`` for
    :meth:`GaussianReference.forward`.

    ``pca``: the top ``k`` directions, their standard deviations and the median squared residual.
    ``shrunk``: up to ``k`` directions of the Ledoit-Wolf covariance ``(1 - a) S + a mu I``, the
    variance ``a mu`` outside them, both scaled by the median training distance.
    """
    mean = x.mean(0)
    z = x - mean
    _, sv, vt = torch.linalg.svd(z, full_matrices=False)
    keep = min(k, len(sv))
    basis = torch.zeros(k, x.shape[1], dtype=x.dtype)
    basis[:keep] = vt[:keep]
    if not shrunk:
        proj = z @ basis.T
        residual = ((z - proj @ basis) ** 2).sum(1).median().clamp_min(1e-9)
        sd = (sv[:k] / max(1, len(x) - 1) ** 0.5).clamp_min(1e-6)
        return mean, basis, sd, residual
    n, d = z.shape
    a = ledoit_wolf(z)
    mu = float((z**2).sum()) / (n * d)
    outside = max(a * mu, 1e-12)
    var = torch.full((k,), outside, dtype=x.dtype)
    var[:keep] = ((1 - a) * sv[:keep] ** 2 / n + a * mu).clamp_min(1e-12)
    proj = z @ basis.T
    raw = ((z - proj @ basis) ** 2).sum(1) / outside + (proj**2 / var).sum(1)
    med = float(raw.median().clamp_min(1e-12))
    return mean, basis, (var * med).sqrt(), torch.tensor(outside * med, dtype=x.dtype)


class GaussianReference(nn.Module):
    """``forward(x (B, D)) -> (B,)``: distance of rows to a Gaussian fitted by :meth:`fit`."""

    def __init__(self, dims: int, k: int, n_leads: int, shrunk: bool, scaled: bool):
        super().__init__()
        self.n_leads, self.shrunk, self.scaled = n_leads, shrunk, scaled
        self.register_buffer("mean", torch.zeros(dims))
        self.register_buffer("basis", torch.zeros(k, dims))
        self.register_buffer("sd", torch.ones(k))
        self.register_buffer("residual", torch.ones(()))
        if scaled:
            self.register_buffer("scale", torch.ones(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scaled:
            x = x / self.scale
        z = x - self.mean
        proj = z @ self.basis.T
        outside = ((z - proj @ self.basis) ** 2).sum(1) / self.residual
        inside = (proj / self.sd) ** 2
        if self.shrunk:
            return outside + inside.sum(1)
        return outside + inside.mean(1)

    def fit(self, x: torch.Tensor) -> None:
        """Fit on rows ``x`` ``(N, D)`` (float64) of normal training windows."""
        scale = lead_scale(x, self.n_leads) if self.scaled else None
        fitted = fit_gaussian(x if scale is None else x / scale, len(self.basis), self.shrunk)
        for buf, value in zip((self.mean, self.basis, self.sd, self.residual), fitted, strict=True):
            buf.copy_(value.to(buf.dtype))
        if scale is not None:
            self.scale.copy_(scale.float())


class PopulationReference(nn.Module):
    """``forward(consensus (B, L, 1, segment), windows (B, L, T)) -> (B,)``: the distance of a
    window's consensus descriptor (plus, with ``population_spectrum_frame``, that of its band
    spectrum) to normal training windows, fitted by :meth:`fit`."""

    def __init__(self, cfg: ConsensusConfig):
        super().__init__()
        k, shrunk, scaled = (cfg.population_components, cfg.population_covariance == "shrunk",
                             cfg.population_lead_scale)  # fmt: skip
        self.level = GaussianReference(cfg.n_leads * cfg.segment, k, cfg.n_leads, shrunk, scaled)
        self.spectrum: BandSpectrum | None = None
        self.band: GaussianReference | None = None
        if cfg.population_spectrum_frame:
            self.spectrum = BandSpectrum(cfg)
            dims = cfg.n_leads * cfg.population_spectrum_bands
            self.band = GaussianReference(dims, min(k, dims), cfg.n_leads, shrunk, scaled)

    def forward(self, consensus: torch.Tensor, windows: torch.Tensor | None = None) -> torch.Tensor:
        score = self.level(consensus.reshape(consensus.shape[0], -1))
        if self.spectrum is not None and windows is not None:
            score = score + self.band(self.spectrum(windows))
        return score

    def fit(self, consensus: torch.Tensor, windows: torch.Tensor) -> None:
        """Fit on the consensus descriptors ``(N, L, 1, segment)`` of normal training windows
        ``(N, L, T)``."""
        self.level.fit(consensus.reshape(len(consensus), -1).to(torch.float64))
        if self.spectrum is not None:
            spec = torch.cat([self.spectrum(w) for w in torch.split(windows, 256)])
            self.band.fit(spec.to(torch.float64))
