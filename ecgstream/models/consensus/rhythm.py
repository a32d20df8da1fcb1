"""The rhythm term: each segment's middle against the signal one beat period before and after it.

A beat out of step with the window's rhythm (premature, a pause, the junction of a pasted
stretch, a time warp) matches neither the signal one period before nor the one after; a regular
beat matches at least one. The segment descriptor cannot see this: a premature beat of normal
shape has a normal amplitude distribution. Weight ``rhythm_weight``; lengths in samples.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ecgstream.models.consensus.config import ConsensusConfig
from ecgstream.models.consensus.descriptor import grid

__all__ = ["RhythmTerm", "first_period"]


def first_period(profile: torch.Tensor, lags: torch.Tensor) -> torch.Tensor:
    """The beat period ``(B, 1)`` from a dissimilarity ``profile`` ``(B, n_lags)`` over ``lags``
    ``(n_lags,)`` (ascending, in the caller's samples): the first local minimum at or after the
    first lag whose dissimilarity is within 1.3 times the lowest, so not a multiple of the period.
    Argmax and gathers only (exports to ONNX)."""
    first_low = profile <= 1.3 * profile.amin(1, keepdim=True)
    start = first_low.float().argmax(1, keepdim=True)
    last = torch.ones_like(profile[:, :1], dtype=torch.bool)
    rising = torch.cat([profile[:, 1:] >= profile[:, :-1], last], dim=1)
    after_start = torch.arange(profile.shape[1], device=profile.device)[None] >= start
    return lags[(rising & after_start).float().argmax(1)][:, None]


class RhythmTerm(nn.Module):
    """``forward(windows (B, L, T)) -> (B, n_segments)``: how far each segment's middle is from
    the signal one beat before or after it, beyond ``rhythm_excess`` times the window's median.

    The window's beat period is the lag (``rhythm_min_lag``..``rhythm_max_period`` samples)
    at which the signal best matches itself, on average over the segments: the first minimum of
    that profile within 1.3 times its lowest value, so not a multiple of it. Each segment's
    middle ``rhythm_span`` samples are then compared with the samples one period (within
    ``rhythm_tolerance``) before and after; the squared difference is divided by the two spans'
    energy, and the better of the two directions counts.

    The signal compared is the rectified window averaged over ``rhythm_decimate`` samples (an
    envelope at 20 Hz for 5 samples at 100 Hz; lags at that resolution): where the waves are,
    not their sign, which is what timing needs, at a twenty-fifth of the cost of every lag at
    the full rate. With ``rhythm_every`` k > 1 every k-th segment is compared and the segments
    between are interpolated linearly. With ``rhythm_gate`` g > 0 the term is multiplied by
    ``max(0, 1 - median / g)``: it fades out in a window whose typical segment matches the
    signal one period away no better than g (an irregular rhythm such as atrial fibrillation,
    whose normal beats are all out of step).
    """

    def __init__(self, cfg: ConsensusConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.rhythm_decimate
        #: where the first segment's middle ``rhythm_span`` samples start, at the term's rate
        self.first = (cfg.segment - cfg.rhythm_span) // 2 // d
        lags = torch.arange(-(-cfg.rhythm_min_lag // d), cfg.rhythm_max_lag // d + 1)
        sub, left, right, frac = grid(cfg.n_segments, cfg.rhythm_every)
        lo = self.first + sub * (cfg.stride // d)
        hi = lo + cfg.rhythm_span // d
        back_ok = (lo[None] - lags[:, None]) >= 0
        fwd_ok = (hi[None] + lags[:, None]) <= cfg.window // d
        self.lag_list = lags.tolist()
        buffers = {
            "lags": lags.float(),
            "back_ok": back_ok.float(),
            "back_off": (~back_ok).float() * 1e6,
            "fwd_off": (~fwd_ok).float() * 1e6,
            "not_period": (lags * d > cfg.rhythm_max_period).float() * 1e6,
            "left": left,
            "right": right,
            "frac": frac,
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        d = cfg.rhythm_decimate
        x = F.avg_pool1d(windows.abs(), d) if d > 1 else windows.abs()  # (B, L, T / d)
        span, step = cfg.rhythm_span // d, cfg.stride // d * cfg.rhythm_every
        t, top, first = x.shape[2], self.lag_list[-1], self.first
        n = len(range(0, cfg.n_segments, cfg.rhythm_every))  # segments compared
        lags = self.lag_list
        before, after = F.pad(x, (top, 0)), F.pad(x, (0, top))
        width = (n - 1) * step + span

        def energy(v: torch.Tensor) -> torch.Tensor:
            """The sum of squares over the leads of every ``span`` samples of ``v``, ``(B, 1, .)``."""
            return F.avg_pool1d((v * v).sum(1, keepdim=True), span, 1) * span

        def at(e: torch.Tensor, offsets: list[int]) -> torch.Tensor:
            """``e`` at each segment's span start plus each offset, ``(B, len(offsets), n)``."""
            return torch.cat([e[..., o : o + (n - 1) * step + 1 : step] for o in offsets], 1)

        def cross(other: torch.Tensor) -> torch.Tensor:
            """Each segment's span of the window times ``other`` ``(B, L, n_lags, t)``, summed."""
            v = (x[:, :, None] * other).sum(1)[..., first : first + width]
            return F.avg_pool1d(v, span, step) * span

        # every lagged copy of the window, samples u - lag and u + lag: (B, L, n_lags, t)
        past = torch.stack([before[..., top - lag : top - lag + t] for lag in lags], 2)
        e_before = energy(before)
        own = at(e_before, [top + first])  # (B, 1, n)
        floor = 1e-3 * span  # flat lines are not divided by ~0
        total = own + at(e_before, [top + first - lag for lag in lags])
        back = (total - 2 * cross(past)).clamp_min(0) / (total + floor)
        ok = self.back_ok
        profile = (back * ok).sum(2) / ok.sum(1) + self.not_period
        period = first_period(profile, self.lags)
        future = torch.stack([after[..., lag : lag + t] for lag in lags], 2)
        total = own + at(energy(after), [first + lag for lag in lags])
        fwd = (total - 2 * cross(future)).clamp_min(0) / (total + floor)
        off = (self.lags[None] - period).abs() > cfg.rhythm_tolerance * period
        off = off.float()[:, :, None] * 1e6
        score = torch.minimum(
            (back + self.back_off + off).amin(1),
            (fwd + self.fwd_off + off).amin(1),
        )
        median = torch.topk(score, n // 2 + 1, dim=1, largest=False, sorted=False).values
        median = median.amax(1, keepdim=True)
        score = F.relu(score - cfg.rhythm_excess * median)
        if cfg.rhythm_gate > 0:  # fades out as the window's rhythm loses its period
            score = score * F.relu(1 - median / cfg.rhythm_gate)
        if cfg.rhythm_every == 1:
            return score
        left, right = score.index_select(1, self.left), score.index_select(1, self.right)
        return left + self.frac * (right - left)
