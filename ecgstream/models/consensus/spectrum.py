"""The band spectrum the population reference also compares: Welch estimate of band power.

A window's typical segment (the consensus) drops the heart rate and each lead's wave timing;
its band spectrum keeps them. Hann frames of ``population_spectrum_frame`` samples every half
frame, DFT bins from 1 (fs / frame Hz) on, ``population_spectrum_band_bins`` bins per band,
power in mV^2 averaged over frames and bins, then ``log(power + 1e-4)``. Fixed buffers only.
"""

from __future__ import annotations

import torch
from torch import nn

from ecgstream.models.consensus.config import ConsensusConfig
from ecgstream.models.consensus.descriptor import frames

__all__ = ["BandSpectrum"]


class BandSpectrum(nn.Module):
    """``forward(windows (B, L, T)) -> (B, L * population_spectrum_bands)`` log band powers."""

    def __init__(self, cfg: ConsensusConfig):
        super().__init__()
        n, nb = cfg.population_spectrum_frame, cfg.population_spectrum_bands
        width = cfg.population_spectrum_band_bins
        self.frame, self.window = n, cfg.window
        t = torch.arange(n, dtype=torch.float64)[:, None]
        freq = torch.arange(1, 1 + nb * width, dtype=torch.float64)[None]
        hann = torch.hann_window(n, periodic=False, dtype=torch.float64)[:, None]
        angle = 2 * torch.pi * t * freq / n
        self.register_buffer("cos", (hann * torch.cos(angle)).float(), persistent=False)
        self.register_buffer("sin", (hann * torch.sin(angle)).float(), persistent=False)
        bands = torch.kron(torch.eye(nb), torch.full((width, 1), 1.0 / width))
        self.register_buffer("bands", bands, persistent=False)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        n = self.frame
        step = max(1, n // 2)
        parts = frames(windows, n, step, (self.window - n) // step + 1)
        power = (parts @ self.cos) ** 2 + (parts @ self.sin) ** 2
        bands = power.mean(2) @ self.bands
        return torch.log(bands + 1e-4).reshape(windows.shape[0], -1)
