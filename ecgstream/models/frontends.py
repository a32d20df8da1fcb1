"""2-D front ends inside the model graph: log-spectrograms and channel x time images.

A front end turns a batch of preprocessed windows ``(B, n_leads, window)`` (the graph input of
every ecgstream model) into an image ``(B, channels, rows, cols)`` for the CNN encoder. It is part
of the exported ONNX graph, with its parameters as fixed weights and buffers, so training,
``ecgstream score`` and the streaming worker cannot disagree and the runtime needs nothing new.

- :class:`SpectrogramFrontend`: per-window mean removal (``scale="fixed"``, the default) or
  per-window standardisation (``scale="window"``, the first version: it removes the energy
  difference an ectopic beat or a gain change makes), reflect padding, STFT as a strided
  ``Conv1d`` with fixed Hann-windowed cosine/sine kernels, log-magnitude, then per-frequency
  normalisation (mean and scale of the log-energy fitted on normal training windows, stored as
  a fixed ``1x1`` convolution: a fixed log-energy scale calibrated on training normals). Image: leads as channels, frequency bins as rows, STFT frames as columns; frame ``t`` is centred on
  sample ``t * hop``.
- :class:`ChannelTimeFrontend`: the ``n_leads`` series as rows and time as columns (multichannel
  sensors, plain series), in two planes: standardised per window (shape) and with the training
  data's mean and scale (level and amplitude).

:meth:`params` / :func:`build_frontend` round-trip the settings through the model metadata.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["SpectrogramFrontend", "ChannelTimeFrontend", "build_frontend", "FRONTENDS"]

_EPS = 1e-6


SPECTROGRAM_SCALES = ("fixed", "window")


def _centre(x: torch.Tensor) -> torch.Tensor:
    """Per-window, per-lead zero mean (the scale is kept)."""
    return x - x.mean(-1, keepdim=True)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-window, per-lead zero mean and unit scale (scale floored so flat lines stay finite)."""
    mean = x.mean(-1, keepdim=True)
    std = ((x - mean) ** 2).mean(-1, keepdim=True).sqrt()
    return (x - mean) / (std + 1e-3)


class SpectrogramFrontend(nn.Module):
    """STFT log-magnitude of each lead with per-frequency normalisation, in the graph.

    ``n_fft`` and ``hop`` are in samples at the model rate; ``n_leads`` is the input channel count.
    ``scale``: ``"fixed"`` removes each window's mean only, so the log-energy keeps its level and
    the fitted per-frequency normalisation is a fixed scale calibrated on training normals;
    ``"window"`` standardises each window first (energy differences between windows vanish).
    ``rows`` keeps only the lowest frequency bins (bin ``k`` is ``k * fs / n_fft`` Hz; 0: all).
    Output ``(B, n_leads, rows or n_fft // 2 + 1, window // hop + 1)``. Call
    :meth:`fit_norm` on normal windows before training so each frequency row has zero mean and
    unit scale.
    """

    kind = "spectrogram"

    def __init__(
        self,
        n_leads: int,
        window: int,
        n_fft: int = 32,
        hop: int = 4,
        scale: str = "fixed",
        rows: int = 0,
    ):
        super().__init__()
        if n_fft > window:
            raise ValueError(f"n_fft {n_fft} is longer than the {window}-sample window")
        if scale not in SPECTROGRAM_SCALES:
            raise ValueError(
                f"unknown spectrogram scale {scale!r}; choose from {', '.join(SPECTROGRAM_SCALES)}"
            )
        self.n_leads, self.window, self.n_fft, self.hop = n_leads, window, n_fft, hop
        self.scale = scale
        # the lowest ``rows`` frequency bins (0: all n_fft // 2 + 1)
        self.n_freq = min(rows, n_fft // 2 + 1) if rows > 0 else n_fft // 2 + 1
        self.n_frames = window // hop + 1
        k = torch.arange(self.n_freq, dtype=torch.float64)[:, None]
        t = torch.arange(n_fft, dtype=torch.float64)[None, :]
        hann = 0.5 - 0.5 * torch.cos(2 * math.pi * (t + 0.5) / n_fft)
        cos = torch.cos(2 * math.pi * k * t / n_fft) * hann
        sin = -torch.sin(2 * math.pi * k * t / n_fft) * hann
        basis = torch.cat([cos, sin], 0).float()[:, None, :]  # (2F, 1, n_fft)
        self.stft = nn.Conv1d(1, 2 * self.n_freq, n_fft, stride=hop, bias=False)
        self.stft.weight.data.copy_(basis)
        # per-(lead, frequency) normalisation as a fixed 1x1 conv (depthwise scale + bias)
        rows = n_leads * self.n_freq
        self.norm = nn.Conv2d(rows, rows, 1, groups=rows)
        self.norm.weight.data.fill_(1.0)
        self.norm.bias.data.zero_()
        for p in self.parameters():
            p.requires_grad_(False)

    def log_magnitude(self, windows: torch.Tensor) -> torch.Tensor:
        """``(B, L, W)`` -> unnormalised log-magnitude ``(B, L, F, T)``."""
        b, leads, w = windows.shape
        x = _standardise(windows) if self.scale == "window" else _centre(windows)
        pad = self.n_fft // 2
        x = nn.functional.pad(x.reshape(b * leads, 1, w), (pad, pad), mode="reflect")
        spec = self.stft(x)  # (B*L, 2F, T)
        re, im = spec[:, : self.n_freq], spec[:, self.n_freq :]
        mag = torch.log(re * re + im * im + _EPS) * 0.5
        return mag.reshape(b, leads, self.n_freq, -1)[..., : self.n_frames]

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        logmag = self.log_magnitude(windows)
        b, c, f, t = logmag.shape
        return self.norm(logmag.reshape(b, c * f, 1, t)).reshape(b, c, f, t)

    @torch.no_grad()
    def fit_norm(self, windows: torch.Tensor | np.ndarray, batch: int = 512) -> None:
        """Fit per-(lead, frequency) mean and scale on normal windows ``(n, L, W)``."""
        windows = torch.as_tensor(np.asarray(windows, dtype=np.float32))
        parts = [self.log_magnitude(windows[i : i + batch]) for i in range(0, len(windows), batch)]
        rows = self.n_leads * self.n_freq
        mags = torch.cat(parts).permute(1, 2, 0, 3).reshape(rows, -1)
        mean = mags.mean(1)
        std = mags.std(1).clamp_min(1e-3)
        self.norm.weight.data.copy_((1.0 / std)[:, None, None, None])
        self.norm.bias.data.copy_(-mean / std)

    def params(self) -> dict:
        """Settings and fitted normalisation (for the model metadata)."""
        return {
            "frontend": self.kind,
            "n_fft": self.n_fft,
            "hop": self.hop,
            "scale": self.scale,
            "rows": self.n_freq,
            "freq_scale": self.norm.weight.data.flatten().tolist(),
            "freq_bias": self.norm.bias.data.tolist(),
        }

    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, rows, cols)`` of the output image."""
        return self.n_leads, self.n_freq, self.n_frames

    def time_per_col(self) -> float:
        """Samples per image column."""
        return float(self.hop)


class ChannelTimeFrontend(nn.Module):
    """Channel x time image ``(B, planes, n_leads, window)`` of a multichannel (or single) series.

    Plane 0 is the window standardised per channel (shape); with ``global_plane`` a second plane
    holds the samples standardised with the training data's per-channel mean and scale (fitted by
    :meth:`fit_norm`), so level and amplitude changes stay visible.
    """

    kind = "channel_time"

    def __init__(
        self, n_leads: int, window: int, standardise: bool = True, global_plane: bool = True
    ):
        super().__init__()
        self.n_leads, self.window, self.standardise = n_leads, window, standardise
        self.global_plane = global_plane
        self.register_buffer("mean", torch.zeros(1, n_leads, 1))
        self.register_buffer("scale", torch.ones(1, n_leads, 1))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        local = _standardise(windows) if self.standardise else windows
        if not self.global_plane:
            return local.unsqueeze(1)
        return torch.stack([local, (windows - self.mean) / self.scale], 1)

    @torch.no_grad()
    def fit_norm(self, windows: torch.Tensor | np.ndarray, batch: int = 512) -> None:
        """Per-channel mean and scale of normal windows ``(n, L, W)`` for the global plane."""
        x = torch.as_tensor(np.asarray(windows, dtype=np.float32))
        self.mean.copy_(x.mean((0, 2)).reshape(1, -1, 1))
        self.scale.copy_(x.std((0, 2)).clamp_min(1e-6).reshape(1, -1, 1))

    def params(self) -> dict:
        return {
            "frontend": self.kind,
            "standardise": self.standardise,
            "global_plane": self.global_plane,
            "mean": self.mean.flatten().tolist(),
            "scale": self.scale.flatten().tolist(),
        }

    def image_shape(self) -> tuple[int, int, int]:
        return 1 + int(self.global_plane), self.n_leads, self.window

    def time_per_col(self) -> float:
        return 1.0


FRONTENDS = {"spectrogram": SpectrogramFrontend, "channel_time": ChannelTimeFrontend}


def build_frontend(params: dict, n_leads: int, window: int) -> nn.Module:
    """Rebuild a front end from :meth:`params` output (restoring any fitted normalisation)."""
    kind = params.get("frontend", "spectrogram")
    if kind == "spectrogram":
        # files written before ``scale`` existed standardised each window (``standardise``)
        scale = params.get("scale") or ("window" if params.get("standardise", True) else "fixed")
        if params.get("relative"):
            raise ValueError(
                "this model's spectrogram has a relative plane, an option since removed "
                "(docs/research/image-studies.md); retrain it"
            )
        fe = SpectrogramFrontend(
            n_leads,
            window,
            params.get("n_fft", 32),
            params.get("hop", 4),
            scale,
            params.get("rows", 0),
        )
        if "freq_scale" in params:
            fe.norm.weight.data.copy_(torch.tensor(params["freq_scale"])[:, None, None, None])
            fe.norm.bias.data.copy_(torch.tensor(params["freq_bias"]))
        return fe
    if kind == "channel_time":
        fe = ChannelTimeFrontend(
            n_leads, window, params.get("standardise", True), params.get("global_plane", True)
        )
        if "mean" in params:
            fe.mean.copy_(torch.tensor(params["mean"]).reshape(1, -1, 1))
            fe.scale.copy_(torch.tensor(params["scale"]).reshape(1, -1, 1))
        return fe
    raise ValueError(f"unknown front end {kind!r}; choose from {', '.join(FRONTENDS)}")
