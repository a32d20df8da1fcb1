"""Score refiner: a small learned convolution that says where in a window an anomaly lies.

The consensus detector (:mod:`ecgstream.models.consensus`) scores each segment of a window on
its own. Its score trace holds more than each value says: an anomaly shows as a bump with edges
of a certain shape, real baseline movement as a drift of the segment levels. The refiner reads
the trace of a window's segment scores (their logarithm) and each segment's median level (mV),
and gives a logit per segment that an anomaly covers it. It is trained on synthetic anomalies
(:mod:`ecgstream.signals.synth`) injected into the training records
(:mod:`ecgstream.training.refiner`), the positives for a refiner head that the design names.

With ``waveform_channels > 0`` it also reads the window itself (mV, averaged over
``waveform_decimate`` samples): two small convolutions of about 90 ms at the window's rate and
one value per channel over the two strides around each segment's centre, so it sees the shape
of a junction or an edge that the segment scores blur. Trained on other amplitudes and
polarities of its training windows (:func:`ecgstream.training.refiner.other_amplitudes`); off in
the shipped models (docs/model-consensus.md, "Score refiner").

The refined segment score is the segment score times
``max(exp(weight * (logit - floor)), min_gain)``: raised where the refiner sees an anomaly, and
with the default ``min_gain = 1`` never lowered. The window score (detection, thresholds) stays
the detector's own; only where the score lies within a window (localisation, the point scores)
changes.

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

    ``channels`` wide, one layer per entry of ``dilations`` (kernel ``kernel``), so it sees
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
        min_gain: float = 1.0,
        waveform_channels: int = 0,
        segment: int = 80,
        stride: int = 10,
        waveform_decimate: int = 1,
    ):
        super().__init__()
        if channels < 1 or not dilations or min(dilations) < 1 or kernel < 1 or kernel % 2 == 0:
            raise ValueError(
                f"the refiner needs channels >= 1, dilations >= 1 and an odd kernel; got "
                f"{channels}, {dilations}, {kernel}"
            )
        if not 0 < min_gain <= 1:
            raise ValueError(f"the refiner's min_gain must be in (0, 1], got {min_gain}")
        start = segment // 2 - stride  # the first segment's reach: its centre +- one stride
        if waveform_channels < 0 or (
            waveform_channels > 0
            and (start < 0 or waveform_decimate < 1 or (stride % waveform_decimate)
                 or (start % waveform_decimate))
        ):  # fmt: skip
            raise ValueError(
                f"the refiner's waveform_channels must be >= 0; reading the waveform needs "
                f"segments of at least two strides and a decimation that divides the stride and "
                f"half a segment less one stride; got {waveform_channels} channels, segment "
                f"{segment}, stride {stride}, decimation {waveform_decimate} samples"
            )
        self.weight, self.floor, self.level_scale = float(weight), float(floor), float(level_scale)
        self.min_gain = float(min_gain)
        self.inp = nn.Conv1d(1 + n_leads + waveform_channels, channels, 1)
        self.wave: nn.ModuleList | None = None
        if waveform_channels > 0:
            w, d = waveform_channels, waveform_decimate
            k = 2 * (4 // d) + 1  # about 90 ms at any decimation
            self.wave = nn.ModuleList(
                [
                    nn.Conv1d(n_leads, w, k, padding=k // 2),
                    nn.Conv1d(w, w, k, padding=2 * (k // 2), dilation=2),
                    # one output per segment: 2 strides of samples around its centre
                    nn.Conv1d(w, w, 2 * stride // d, stride=stride // d),
                ]
            )
            self.wave_start, self.wave_step, self.decimate = start // d, stride // d, d
        self.blocks = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=d * (kernel // 2), dilation=d)
            for d in dilations
        )
        self.out = nn.Conv1d(channels, 1, 1)

    def features(self, seg_score: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + L, S)``: log segment scores ``(B, S)`` and scaled levels ``(B, L, S)``."""
        log_score = torch.log(seg_score.clamp_min(0) + LOG_OFFSET)[:, None]
        return torch.cat([log_score, level * self.level_scale], dim=1)

    def waveform(self, windows: torch.Tensor, n_segments: int) -> torch.Tensor:
        """``(B, waveform_channels, S)``: the window ``(B, L, T)`` (mV) read by small
        convolutions at its own rate, one value per channel around each segment's centre."""
        assert self.wave is not None
        first, second, to_segments = self.wave
        if self.decimate > 1:
            windows = nn.functional.avg_pool1d(windows, self.decimate)
        h = torch.relu(first(windows))
        h = h + torch.relu(second(h))
        stop = self.wave_start + self.wave_step * (n_segments + 1)
        return torch.relu(to_segments(h[..., self.wave_start : stop]))

    def logits(self, features: torch.Tensor, windows: torch.Tensor | None = None) -> torch.Tensor:
        """Per-segment logits ``(B, S)`` that a synthetic-style anomaly covers the segment;
        ``windows`` ``(B, L, T)`` only for a refiner that reads the waveform."""
        if self.wave is not None:
            if windows is None:
                raise ValueError("this refiner reads the waveform: pass the windows too")
            features = torch.cat([features, self.waveform(windows, features.shape[-1])], dim=1)
        h = torch.relu(self.inp(features))
        for block in self.blocks:
            h = h + torch.relu(block(h))
        return self.out(h)[:, 0]

    def forward(
        self, seg_score: torch.Tensor, level: torch.Tensor, windows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Refined segment scores ``(B, S)``: ``seg_score`` raised where the logits are high
        (and lowered, to at most ``min_gain`` times, where they are below the floor)."""
        logit = self.logits(self.features(seg_score, level), windows)
        gain = torch.exp(self.weight * (logit - self.floor))
        return seg_score.clamp_min(0) * gain.clamp_min(self.min_gain)
