"""MMAE-ECG: multi-scale masked autoencoder for ECG windows (after Zhou et al., arXiv 2502.05494).

Input: preprocessed windows ``(B, n_leads, window)`` in mV at the model rate. Inside the graph:

1. **Per-window, per-lead centring** (``input_norm="mean"``, the default: amplitudes stay in mV,
   so a large ectopic beat is not shrunk by its own window's variance), or standardisation to
   unit standard deviation (``input_norm="std"``).
2. **Tokens at two scales.** The window is cut into non-overlapping *global* segments of
   ``segment`` samples spanning all leads, and into *local* segments of ``segment // 2`` samples
   (finer tokens). Each scale has its own linear embedding and its own learnable positional
   embedding (``pos_global`` and ``pos_local``).
3. **Two-scale masking.** A *local region* of ``local_region`` global segments is represented by
   its fine tokens; the rest of the window by global tokens. In training the region is placed at
   random and random global tokens outside it (ratio ``mask_global``) and random local tokens in
   it (ratio ``mask_local``) are hidden.
4. **One lightweight encoder** (:class:`~ecgstream.models.token_core.TokenCore`) over the visible
   tokens of both scales, and **one decoder block** that reconstructs the hidden ones.
5. **Loss**: MSE of the hidden segments in input units (mV^2 with ``input_norm="mean"``). The
   targets are not standardised per segment: a score may use only what the model sees, and a
   hidden segment's own mean and spread are not among that.

**Deterministic inference.** A fixed set of passes (buffers, no randomness): the local region
steps over the window in ``ceil(n_global / local_region)`` positions; for each position,
``infer_local_masks`` interleaved patterns hide the fine tokens of the region, and global tokens
outside the region are hidden by ``infer_global_masks`` interleaved patterns (cycling with the
pass number). Every global segment and every local segment is hidden, and reconstructed from its
visible neighbours, at least once. So at inference the local scale gives a second, finer
reconstruction of every part of the window (each part once, when the region passes over it).

**Scores.** The squared residual of a hidden segment's reconstruction (mV^2 with
``input_norm="mean"``), averaged over leads, is the score of each of its samples; a sample's point score averages over the passes that hid it (both scales, the local one
weighted by ``local_weight``). The window score is the mean of the top ``topk_frac`` point
scores. Outputs: ``point_score`` ``(B, window)`` and ``window_score`` ``(B,)``, the graph
interface of :mod:`ecgstream.runtime.model_file`.

>>> import torch
>>> cfg = MMAEConfig(n_leads=1, window=400, segment=20, local_region=5, dim=32, depth=1, heads=2)
>>> model = MMAE(cfg).eval()
>>> point, window = model(torch.randn(2, 1, 400))
>>> tuple(point.shape), tuple(window.shape)
((2, 400), (2,))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ecgstream.models.consensus.rhythm import first_period
from ecgstream.models.token_core import TokenCore, gather_tokens, random_split

__all__ = [
    "MMAEConfig",
    "MMAE",
    "count_parameters",
    "estimate_macs",
    "inference_passes",
    "masked_r2",
]


#: the rhythm prompt's envelope is the rectified signal averaged over this many samples
_DECIMATE = 5


@dataclass
class MMAEConfig:
    """Architecture of one MMAE-ECG model (all lengths in samples at the model rate)."""

    n_leads: int = 1
    window: int = 1000
    segment: int = 40
    local_factor: int = 2
    local_region: int = 5
    mask_global: float = 0.5
    mask_local: float = 0.5
    infer_global_masks: int = 2
    infer_local_masks: int = 2
    dim: int = 64
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    local_weight: float = 1.0
    topk_frac: float = 0.1
    #: "mean": subtract each lead's window mean (keeps mV amplitude); "std": also divide by its std
    input_norm: str = "mean"
    #: rhythm prompt: 0 = off; k = every token also carries the visible signal 1..k beat periods
    #: before and after it, aligned per token, and the heads correct the mean of those copies
    prompt_periods: int = 0
    #: beat periods searched (samples): from the visible envelope's self-dissimilarity
    prompt_min_lag: int = 30
    prompt_max_lag: int = 150
    #: per-token alignment: lags within j * period +- prompt_refine samples, step prompt_refine_step,
    #: matched on the token's span and prompt_margin samples either side
    prompt_refine: int = 10
    prompt_refine_step: int = 2
    prompt_margin: int = 20
    #: how the aligned copies are combined into the copy the heads correct: "mean" (plain mean of
    #: the available copies), "cost" (weights ``exp(-cost / prompt_tau)`` from each copy's match
    #: cost on the visible samples around the token), "learned" (those weights, plus a gain and a
    #: shift per copy, corrected by the network from the hidden token's decoder state and every
    #: copy's cost and least-squares gain on the visible context; starts at "cost")
    prompt_gate: str = "mean"
    #: refine each token's chosen lag below one sample: the vertex of the parabola through the
    #: costs at the chosen lag and the candidates either side, the copy linearly interpolated
    prompt_subsample: bool = False
    prompt_tau: float = 0.1
    #: add the output heads' free correction to the combined copy (False: the prediction is the
    #: combined copy alone, and with ``prompt_gate = "learned"`` the network learns only the gate)
    prompt_heads: bool = True

    @property
    def n_global(self) -> int:
        return self.window // self.segment

    @property
    def local_segment(self) -> int:
        return self.segment // self.local_factor

    @property
    def n_local(self) -> int:
        return self.window // self.local_segment

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent setting."""
        if self.window % self.segment:
            raise ValueError(f"window {self.window} must be a multiple of segment {self.segment}")
        if self.segment % self.local_factor:
            raise ValueError(
                f"segment {self.segment} must be a multiple of local_factor {self.local_factor}"
            )
        if not 1 <= self.local_region < self.n_global:
            raise ValueError(
                f"local_region {self.local_region} must be 1..{self.n_global - 1} global segments"
            )
        for name in ("mask_global", "mask_local"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.input_norm not in ("mean", "std"):
            raise ValueError(f"input_norm must be 'mean' or 'std', not {self.input_norm!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.prompt_periods < 0:
            raise ValueError(f"prompt_periods must be 0 (off) or more, got {self.prompt_periods}")
        if self.prompt_periods and not (
            _DECIMATE <= self.prompt_min_lag < self.prompt_max_lag < self.window
        ):
            raise ValueError(
                f"prompt lags must satisfy {_DECIMATE} <= prompt_min_lag < prompt_max_lag < window, "
                f"got {self.prompt_min_lag}, {self.prompt_max_lag}, {self.window}"
            )
        if self.prompt_periods and not (self.prompt_refine_step > 0 and self.prompt_refine >= 0):
            raise ValueError("prompt_refine must be >= 0 and prompt_refine_step > 0")
        if self.prompt_gate not in ("mean", "cost", "learned"):
            raise ValueError(
                f"prompt_gate must be 'mean', 'cost' or 'learned', not {self.prompt_gate!r}"
            )
        if self.prompt_periods and self.prompt_gate != "mean" and not self.prompt_tau > 0:
            raise ValueError(f"prompt_tau must be > 0, got {self.prompt_tau}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MMAEConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def shift_visible(
    x: torch.Tensor, vis: torch.Tensor, lag: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The visible signal ``lag`` samples earlier, ``x(t - lag)``, and its visibility.

    ``x`` ``(B, L, T)``, ``vis`` ``(B, T)`` (1 visible, 0 hidden), ``lag`` ``(B, C)`` samples,
    or ``(B, C, T)`` (one lag per output sample); negative: later. Returns ``(B, L, C, T)``
    values (zero where hidden or outside the window) and ``(B, C, T)`` visibility.
    """
    b, leads, t = x.shape
    lag = lag if lag.dim() == 3 else lag[..., None]
    idx = torch.arange(t, device=x.device)[None, None] - lag.round().long()
    inside = ((idx >= 0) & (idx < t)).to(x.dtype)
    idx = idx.clamp(0, t - 1)
    v = torch.gather(vis[:, None].expand(-1, lag.shape[1], -1), 2, idx) * inside
    xs = torch.gather(
        x[:, :, None].expand(-1, -1, lag.shape[1], -1), 3, idx[:, None].expand(-1, leads, -1, -1)
    )
    return xs * v[:, None], v


def _pad(indices: list[int], n: int) -> list[int]:
    """Pad an index list to length ``n`` by repeating its first entry (duplicates are harmless)."""
    return indices + [indices[0]] * (n - len(indices))


def inference_passes(cfg: MMAEConfig) -> dict[str, torch.Tensor]:
    """The fixed inference passes as index tensors (token indices: global first, then local).

    Returns ``keep`` ``(K, Nv)``, ``hide_global`` ``(K, Hg)`` (indices into the global tokens),
    ``hide_local`` ``(K, Hl)`` (indices into the local tokens) and ``region`` ``(K,)`` (first
    global segment of each pass's local region).
    """
    ng, r, f = cfg.n_global, cfg.local_region, cfg.local_factor
    starts = list(range(0, ng - r + 1, r))
    if starts[-1] + r < ng:
        starts.append(ng - r)
    keeps, hides_g, hides_l, regions = [], [], [], []
    p = 0
    for s in starts:
        local = list(range(s * f, (s + r) * f))
        outside = [i for i in range(ng) if not s <= i < s + r]
        for a in range(cfg.infer_local_masks):
            hl = [j for k, j in enumerate(local) if k % cfg.infer_local_masks == a]
            kl = [j for j in local if j not in hl]
            g = p % cfg.infer_global_masks
            hg = [i for i in outside if i % cfg.infer_global_masks == g]
            kg = [i for i in outside if i not in hg]
            keeps.append(kg + [ng + j for j in kl])
            hides_g.append(hg)
            hides_l.append(hl)
            regions.append(s)
            p += 1
    n_keep = max(len(k) for k in keeps)
    n_hg = max(len(h) for h in hides_g)
    n_hl = max(len(h) for h in hides_l)
    return {
        "keep": torch.tensor([_pad(k, n_keep) for k in keeps], dtype=torch.long),
        "hide_global": torch.tensor([_pad(h, n_hg) for h in hides_g], dtype=torch.long),
        "hide_local": torch.tensor([_pad(h, n_hl) for h in hides_l], dtype=torch.long),
        "region": torch.tensor(regions, dtype=torch.long),
    }


def _sample_map(hide: torch.Tensor, seg: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather map from per-pass hidden-segment residuals to samples.

    Residuals of one scale are flattened as ``(K * H * seg)`` plus one trailing zero slot; the map
    ``(K * window,)`` points every (pass, sample) to its residual, or to the zero slot when the
    sample was not hidden at this scale in that pass. Also returns the per-sample count ``(window,)``.
    """
    k, h = hide.shape
    zero = k * h * seg
    index = torch.full((k, window), zero, dtype=torch.long)
    for p in range(k):
        seen = set()
        for j, token in enumerate(hide[p].tolist()):
            if token in seen:
                continue
            seen.add(token)
            t0 = token * seg
            index[p, t0 : t0 + seg] = (p * h + j) * seg + torch.arange(seg)
    count = (index != zero).sum(0).to(torch.float32)
    return index.reshape(-1), count


class MMAE(nn.Module):
    """MMAE-ECG: ``forward(windows) -> (point_score (B, T), window_score (B,))``; ``loss`` trains it."""

    def __init__(self, cfg: MMAEConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d, leads = cfg.dim, cfg.n_leads
        self.embed_global = nn.Linear(leads * cfg.segment, d)
        self.embed_local = nn.Linear(leads * cfg.local_segment, d)
        self.pos_global = nn.Parameter(torch.randn(1, cfg.n_global, d) * 0.02)
        self.pos_local = nn.Parameter(torch.randn(1, cfg.n_local, d) * 0.02)
        self.core = TokenCore(
            d, cfg.depth, cfg.heads, cfg.mlp_ratio, decoder_depth=1, dropout=cfg.dropout
        )
        self.head_global = nn.Linear(d, leads * cfg.segment)
        self.head_local = nn.Linear(d, leads * cfg.local_segment)
        passes = inference_passes(cfg)
        self.register_buffer("keep", passes["keep"], persistent=False)
        self.register_buffer("hide_global", passes["hide_global"], persistent=False)
        self.register_buffer("hide_local", passes["hide_local"], persistent=False)
        map_g, count_g = _sample_map(passes["hide_global"], cfg.segment, cfg.window)
        map_l, count_l = _sample_map(passes["hide_local"], cfg.local_segment, cfg.window)
        if (count_g == 0).any() or (count_l == 0).any():
            raise ValueError("inference masks leave some segments never reconstructed")
        self.register_buffer("map_global", map_g, persistent=False)
        self.register_buffer("map_local", map_l, persistent=False)
        k = passes["keep"].shape[0]
        zero_g = k * passes["hide_global"].shape[1] * cfg.segment  # the "not hidden" slot
        zero_l = k * passes["hide_local"].shape[1] * cfg.local_segment
        mask_g = (map_g != zero_g).reshape(k, cfg.window).to(torch.float32)
        mask_l = (map_l != zero_l).reshape(k, cfg.window).to(torch.float32)
        self.register_buffer("mask_global", mask_g, persistent=False)
        self.register_buffer("mask_local", mask_l, persistent=False)
        self.register_buffer("weight", count_g + cfg.local_weight * count_l, persistent=False)
        self.n_passes = int(passes["keep"].shape[0])
        hidden = ((mask_g + mask_l) > 0).to(torch.float32)
        self.register_buffer("visible", 1.0 - hidden, persistent=False)  # (K, T) per pass
        if cfg.prompt_periods:
            ch = 2 * cfg.prompt_periods  # directions -P, +P, -2P, +2P, ...
            self.embed_prompt_global = nn.Linear(ch * (leads + 1) * cfg.segment, d)
            self.embed_prompt_local = nn.Linear(ch * (leads + 1) * cfg.local_segment, d)
            lags = torch.arange(
                -(-cfg.prompt_min_lag // _DECIMATE), cfg.prompt_max_lag // _DECIMATE + 1
            )
            self.env_lag_list = lags.tolist()
            self.register_buffer("env_lags", lags.float() * _DECIMATE, persistent=False)
            offsets = torch.arange(
                -cfg.prompt_refine, cfg.prompt_refine + 1, cfg.prompt_refine_step
            )
            self.register_buffer("prompt_offsets", offsets.float(), persistent=False)
            self.prompt_offset_list = [float(o) for o in offsets.tolist()]
            mult = [(1 if i % 2 == 0 else -1) * (i // 2 + 1) for i in range(ch)]
            self.register_buffer("prompt_mult", torch.tensor(mult).float(), persistent=False)
            if cfg.prompt_gate == "learned":  # per hidden token: copy weights and gains
                self.gate_global = nn.Linear(d + 2 * ch, 3 * ch)
                self.gate_local = nn.Linear(d + 2 * ch, 3 * ch)
                with torch.no_grad():  # start from the cost-weighted copy
                    for gate in (self.gate_global, self.gate_local):
                        gate.weight.zero_()
                        gate.bias.zero_()
            with torch.no_grad():  # start from the aligned copy; training learns its correction
                for head in (self.head_global, self.head_local):
                    head.weight.zero_()
                    head.bias.zero_()

    # -- pieces shared by training and inference -------------------------------------------------
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Per-window, per-lead centring (``input_norm="mean"``) or standardisation (``"std"``) of ``(B, L, T)``."""
        x = x - x.mean(-1, keepdim=True)
        if self.cfg.input_norm == "std":
            x = x / (x**2).mean(-1, keepdim=True).add(1e-6).sqrt()
        return x

    @staticmethod
    def segments(x: torch.Tensor, seg: int) -> torch.Tensor:
        """``(B, L, T)`` -> ``(B, T // seg, L * seg)`` (segments spanning all leads)."""
        b, leads, t = x.shape
        return (
            x.reshape(b, leads, t // seg, seg).permute(0, 2, 1, 3).reshape(b, t // seg, leads * seg)
        )

    def tokens(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised window -> (tokens, positions, global targets, local targets)."""
        seg_g = self.segments(x, self.cfg.segment)
        seg_l = self.segments(x, self.cfg.local_segment)
        tokens = torch.cat([self.embed_global(seg_g), self.embed_local(seg_l)], 1)
        pos = torch.cat([self.pos_global, self.pos_local], 1)
        return tokens, pos, seg_g, seg_l

    # -- training ----------------------------------------------------------------------------------
    def training_masks(
        self, batch: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random training masks: ``keep`` ``(B, Nv)``, hidden global ``(B, Hg)``, hidden local ``(B, Hl)``."""
        cfg = self.cfg
        ng, nl, r, f = cfg.n_global, cfg.n_local, cfg.local_region, cfg.local_factor
        start = torch.randint(0, ng - r + 1, (batch, 1), generator=generator)
        gi = torch.arange(ng)[None]
        li = torch.arange(nl)[None]
        in_region_g = (gi >= start) & (gi < start + r)
        in_region_l = (li >= start * f) & (li < (start + r) * f)
        n_hg = max(1, round(cfg.mask_global * (ng - r)))
        n_hl = max(1, round(cfg.mask_local * r * f))
        hide_g, keep_g = random_split(batch, ng, n_hg, generator, exclude=in_region_g)
        hide_l, keep_l = random_split(batch, nl, n_hl, generator, exclude=~in_region_l)
        return torch.cat([keep_g, keep_l + ng], 1), hide_g, hide_l

    # -- the rhythm prompt (prompt_periods > 0) ---------------------------------------------------
    def beat_period(self, x: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        """The beat period ``(B, 1)`` in samples of ``x`` ``(B, L, T)`` from its visible samples
        (``vis`` ``(B, T)``): the lag at which the visible envelope (``|x|`` averaged over 5
        samples) best matches itself, each lag's dissimilarity normalised by its visible overlap;
        the first minimum within 1.3 times the lowest (not a multiple of the period)."""
        e = F.avg_pool1d(x.abs() * vis[:, None], _DECIMATE)
        w = F.avg_pool1d(vis[:, None], _DECIMATE)  # visible share of each envelope sample
        e = e / w.clamp_min(1e-3)
        num, den = [], []
        for lag in self.env_lag_list:
            ww = w[..., lag:] * w[..., :-lag]
            a, b = e[..., lag:], e[..., :-lag]
            num.append((ww * (a - b) ** 2).sum((1, 2)))
            den.append((ww * (a * a + b * b)).sum((1, 2)))
        profile = torch.stack(num, 1) / (torch.stack(den, 1) + 1e-6)
        return first_period(profile, self.env_lags)

    def prompt(self, x: torch.Tensor, vis: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per scale (global, then local): aligned prompt values ``(B, L, C, T)``, their
        visibility ``(B, C, T)``, and per token and direction the match cost ``(B, C, n)`` and the
        least-squares gain ``(B, C, n)`` of the copy on the visible samples around the token;
        ``C = 2 * prompt_periods`` directions (-P, +P, -2P, +2P, ...). ``x`` must be zero where
        hidden. Per token and direction, the lag within ``j * P +- prompt_refine`` whose shifted
        visible signal best matches the visible samples in and around the token (the first such
        lag on ties); its cost is the squared difference over the energy of both, plus 10 where
        fewer than 10 % of the samples around the token are visible in both.

        The lag candidates are tried one after the other and each token keeps a running best
        (cost and lag); the chosen lags are gathered once at full rate. Memory is that of one
        candidate per direction, whatever the number of candidates; the beat period and the
        candidates' costs are shared by both scales."""
        cfg = self.cfg
        b, leads, t = x.shape
        ch = self.prompt_mult.shape[0]
        m = cfg.prompt_margin
        base = self.prompt_mult[None] * self.beat_period(x, vis)  # (B, C) samples
        sign = torch.sign(self.prompt_mult)[None]

        def span_means(sums: torch.Tensor, seg: int) -> torch.Tensor:
            """Means of ``(B, k, C, T)`` over each token's span +- margin: ``(B, k, C, n)``."""
            k = sums.shape[1]
            p = F.avg_pool1d(sums.reshape(-1, 1, t), seg + 2 * m, seg, m)
            return p.reshape(b, k, ch, t // seg)

        segs = (cfg.segment, cfg.local_segment)
        best: list[tuple[torch.Tensor, torch.Tensor]] = []  # per scale: cost, offset (B, C, n)
        # sub-sample refinement: per scale the costs of the candidates before and after the best
        side: list[list[torch.Tensor]] = []  # previous cost, cost before best, after, best is new
        for offset in self.prompt_offset_list:
            xs, vs = shift_visible(x, vis, base + sign * offset)
            both = vs * vis[:, None]  # (B, C, T)
            diff = ((x[:, :, None] - xs) ** 2).sum(1) * both
            energy = (x[:, :, None] ** 2 + xs**2).sum(1) * both
            sums = torch.stack([diff, energy, both], 1)
            for i, seg in enumerate(segs):
                p = span_means(sums, seg)
                cost = p[:, 0] / (p[:, 1] + 1e-4) + (p[:, 2] < 0.1).to(x.dtype) * 10.0
                if len(best) <= i:
                    best.append((cost, torch.zeros_like(cost) + offset))
                    if cfg.prompt_subsample:
                        far = torch.full_like(cost, 100.0)
                        side.append([cost, far, far, torch.ones_like(cost, dtype=torch.bool)])
                    continue
                better = cost < best[i][0]  # strict: the first candidate wins ties, as argmin
                best[i] = (
                    torch.where(better, cost, best[i][0]),
                    torch.where(better, torch.zeros_like(cost) + offset, best[i][1]),
                )
                if cfg.prompt_subsample:
                    prev, before, after, fresh = side[i]
                    after = torch.where(fresh, cost, after)
                    before = torch.where(better, prev, before)
                    after = torch.where(better, torch.full_like(cost, 100.0), after)
                    side[i] = [cost, before, after, better]
        out = []
        for i, ((cost, off), seg) in enumerate(zip(best, segs, strict=True)):
            if cfg.prompt_subsample:  # vertex of the parabola, within half a step
                _, before, after, _ = side[i]
                curv = before - 2 * cost + after
                ok = (before < 5.0) & (after < 5.0) & (curv > 1e-6)
                step = cfg.prompt_refine_step
                delta = (step * (before - after) / (2 * curv.clamp_min(1e-6))).clamp(
                    -step / 2, step / 2
                )
                off = off + torch.where(ok, delta, torch.zeros_like(delta))
            # one full-rate gather per scale, at each token's chosen lag
            lag = base[..., None] + sign[..., None] * off.repeat_interleave(seg, 2)
            if cfg.prompt_subsample:  # x(t - lag) linearly interpolated between two samples
                lo = torch.floor(lag)
                frac = lag - lo
                pv0, pm0 = shift_visible(x, vis, lo)
                pv1, pm1 = shift_visible(x, vis, lo + 1.0)
                both = (pm0 * pm1)[:, None]
                near = frac < 0.5
                pv = both * ((1 - frac[:, None]) * pv0 + frac[:, None] * pv1) + (1 - both) * (
                    torch.where(near[:, None], pv0, pv1)
                )
                pm = torch.where(near, pm0, pm1)
            else:
                pv, pm = shift_visible(x, vis, lag)
            if cfg.prompt_gate == "learned":  # gain of the copy on the visible context
                both = pm * vis[:, None]
                xy = (x[:, :, None] * pv).sum(1) * both
                yy = (pv**2).sum(1) * both
                p = span_means(torch.stack([xy, yy], 1), seg)
                gain = (p[:, 0] / (p[:, 1] + 1e-4)).clamp(0.0, 3.0)
            else:
                gain = torch.ones_like(cost)
            out.append((pv, pm, cost, gain))
        return out

    def prompt_tokens(self, x: torch.Tensor, vis: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Prompt embeddings of the tokens of both scales ``(B, N, D)`` and, per scale, the
        prompt (:meth:`prompt`) from which the heads' copy is made."""
        out = []
        scales = (self.cfg.segment, self.cfg.local_segment)
        embeds = (self.embed_prompt_global, self.embed_prompt_local)
        prompts = self.prompt(x, vis)
        for seg, embed, (pv, pm, _, _) in zip(scales, embeds, prompts, strict=True):
            b, leads, ch, t = pv.shape
            feats = torch.cat([pv.reshape(b, leads * ch, t), pm], 1)
            out.append(embed(self.segments(feats, seg)))
        return torch.cat(out, 1), prompts

    def copy(
        self, prompt: tuple[torch.Tensor, ...], hide: torch.Tensor, seg: int,
        state: torch.Tensor | None = None, gate: nn.Module | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """The copy the heads correct at the hidden tokens ``hide`` ``(B, H)`` of one scale,
        ``(B, H, L * seg)``: the available aligned copies combined by ``prompt_gate`` (the
        decoder's ``state`` ``(B, H, D)`` and ``gate`` are used by ``"learned"``)."""
        pv, pm, cost, gain = prompt
        b, leads, ch, t = pv.shape
        n = t // seg
        v = gather_tokens(pv.permute(0, 2, 1, 3).reshape(b, ch * leads, n, seg)
                          .permute(0, 2, 1, 3).reshape(b, n, -1), hide)  # fmt: skip
        v = v.reshape(b, -1, ch, leads, seg)  # (B, H, C, L, seg)
        w = gather_tokens(pm.reshape(b, ch, n, seg).permute(0, 2, 1, 3).reshape(b, n, -1), hide)
        w = w.reshape(b, -1, ch, 1, seg)
        if self.cfg.prompt_gate == "mean":
            return (v.sum(2) / w.sum(2).clamp_min(1.0)).reshape(b, -1, leads * seg)
        c = gather_tokens(cost.transpose(1, 2), hide)  # (B, H, C)
        logit = -c / self.cfg.prompt_tau
        if gate is not None and state is not None:
            g = gather_tokens(gain.transpose(1, 2), hide)
            adj = gate(torch.cat([state, c.clamp_max(2.0), g], -1))  # (B, H, 3C): starts at 0
            logit = logit + adj[..., :ch]
            # a gain and a shift (times the copy's slope, samples) per copy
            slope = torch.cat(
                [
                    v[..., 1:2] - v[..., :1],
                    (v[..., 2:] - v[..., :-2]) / 2,
                    v[..., -1:] - v[..., -2:-1],
                ],
                -1,
            )
            v = v * (1 + adj[..., ch : 2 * ch, None, None]) + slope * adj[..., 2 * ch :, None, None]
        logit = logit - logit.amax(-1, keepdim=True)
        wt = torch.exp(logit)[..., None, None] * w  # (B, H, C, 1, seg)
        return ((wt * v).sum(2) / wt.sum(2).clamp_min(1e-6)).reshape(b, -1, leads * seg)

    def _hidden_samples(self, hide_g: torch.Tensor, hide_l: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` 1 where a sample is hidden at either scale (training masks)."""
        cfg = self.cfg
        b = hide_g.shape[0]
        g = torch.zeros(b, cfg.n_global).scatter_(1, hide_g, 1.0)
        loc = torch.zeros(b, cfg.n_local).scatter_(1, hide_l, 1.0)
        return torch.maximum(
            g.repeat_interleave(cfg.segment, 1), loc.repeat_interleave(cfg.local_segment, 1)
        )

    def _prompted(
        self, xn: torch.Tensor, vis: torch.Tensor, keep: torch.Tensor, hide_g: torch.Tensor,
        hide_l: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Predictions of the hidden tokens of both scales, ``(B, Hg, L * seg)`` and
        ``(B, Hl, L * seg / 2)``, with the prompt; every index ``(B, .)``, ``vis`` ``(B, T)``."""
        cfg = self.cfg
        b = xn.shape[0]
        xv = xn * vis[:, None]  # hidden samples never reach the prompt
        tokens, pos, _, _ = self.tokens(xv)
        ptok, (prompt_g, prompt_l) = self.prompt_tokens(xv, vis)
        pos = pos.expand(b, -1, -1)
        memory = self.core.encode(gather_tokens(tokens + ptok + pos, keep))
        hide_tok = torch.cat([hide_g, hide_l + cfg.n_global], 1)
        recon = self.core.decode(memory, gather_tokens(pos + ptok, hide_tok))
        n_hg = hide_g.shape[1]
        rg, rl = recon[:, :n_hg], recon[:, n_hg:]
        gg = getattr(self, "gate_global", None)
        gl = getattr(self, "gate_local", None)
        pred_g = self.copy(prompt_g, hide_g, cfg.segment, rg, gg)
        pred_l = self.copy(prompt_l, hide_l, cfg.local_segment, rl, gl)
        if cfg.prompt_heads:
            pred_g, pred_l = pred_g + self.head_global(rg), pred_l + self.head_local(rl)
        return pred_g, pred_l

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Masked reconstruction loss of windows ``(B, L, T)``: MSE of the hidden segments in input
        units (mV^2 with ``input_norm="mean"``), the two scales weighted by ``local_weight``."""
        if self.cfg.prompt_periods:
            xn = self.normalise(x)
            keep, hide_g, hide_l = self.training_masks(x.shape[0], generator)
            vis = 1.0 - self._hidden_samples(hide_g, hide_l)
            pred_g, pred_l = self._prompted(xn, vis, keep, hide_g, hide_l)
            seg_g = self.segments(xn, self.cfg.segment)
            seg_l = self.segments(xn, self.cfg.local_segment)
            loss_g = ((pred_g - gather_tokens(seg_g, hide_g)) ** 2).mean()
            loss_l = ((pred_l - gather_tokens(seg_l, hide_l)) ** 2).mean()
            return (loss_g + self.cfg.local_weight * loss_l) / (1.0 + self.cfg.local_weight)
        xn = self.normalise(x)
        tokens, pos, seg_g, seg_l = self.tokens(xn)
        keep, hide_g, hide_l = self.training_masks(x.shape[0], generator)
        hide_l_tok = hide_l + self.cfg.n_global
        recon = self.core(tokens, pos, keep, torch.cat([hide_g, hide_l_tok], 1))
        n_hg = hide_g.shape[1]
        pred_g = self.head_global(recon[:, :n_hg])
        pred_l = self.head_local(recon[:, n_hg:])
        loss_g = ((pred_g - gather_tokens(seg_g, hide_g)) ** 2).mean()
        loss_l = ((pred_l - gather_tokens(seg_l, hide_l)) ** 2).mean()
        return (loss_g + self.cfg.local_weight * loss_l) / (1.0 + self.cfg.local_weight)

    # -- inference -------------------------------------------------------------------------------------
    def _to_samples(self, pred: torch.Tensor, index: torch.Tensor, seg_len: int) -> torch.Tensor:
        """Hidden-segment predictions ``(B, K, H, L * seg_len)`` -> per pass and sample ``(B, L, K, T)``
        (zero where the sample was not hidden at this scale in that pass)."""
        b, k, h, _ = pred.shape
        leads = self.cfg.n_leads
        flat = pred.reshape(b, k, h, leads, seg_len).permute(0, 3, 1, 2, 4).reshape(b, leads, -1)
        flat = torch.cat([flat, torch.zeros_like(flat[:, :, :1])], 2)
        return torch.index_select(flat, 2, index).reshape(b, leads, k, self.cfg.window)

    def reconstruct(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The deterministic passes' reconstructions of windows ``(B, L, T)``.

        Returns the normalised input ``(B, L, T)`` and the global- and local-scale predictions
        ``(B, L, K, T)`` of every pass, in the same units; a prediction counts only where the
        sample was hidden at that scale in that pass (``mask_global``, ``mask_local`` ``(K, T)``).
        """
        cfg = self.cfg
        b = windows.shape[0]
        k = self.n_passes
        xn = self.normalise(windows)
        if cfg.prompt_periods:  # every pass is a row: its prompt sees only its visible samples
            leads, t = xn.shape[1], xn.shape[2]
            rows = lambda v: v[None].expand(b, -1, -1).reshape(b * k, -1)  # noqa: E731
            xk = xn[:, None].expand(-1, k, -1, -1).reshape(b * k, leads, t)
            pred_g, pred_l = self._prompted(
                xk, rows(self.visible), rows(self.keep), rows(self.hide_global),
                rows(self.hide_local),
            )  # fmt: skip
            pred_g = pred_g.reshape(b, k, self.hide_global.shape[1], -1)
            pred_l = pred_l.reshape(b, k, self.hide_local.shape[1], -1)
            return (
                xn,
                self._to_samples(pred_g, self.map_global, cfg.segment),
                self._to_samples(pred_l, self.map_local, cfg.local_segment),
            )
        tokens, pos, _, _ = self.tokens(xn)
        d = tokens.shape[-1]
        visible = torch.index_select(tokens + pos, 1, self.keep.reshape(-1)).reshape(b * k, -1, d)
        memory = self.core.encode(visible)
        hide_tok = torch.cat([self.hide_global, self.hide_local + cfg.n_global], 1)  # (K, H)
        hidden_pos = torch.index_select(pos, 1, hide_tok.reshape(-1)).reshape(1, k, -1, d)
        hidden_pos = hidden_pos.expand(b, -1, -1, -1).reshape(b * k, -1, d)
        recon = self.core.decode(memory, hidden_pos).reshape(b, k, hide_tok.shape[1], d)
        n_hg = self.hide_global.shape[1]
        pred_g = self._to_samples(
            self.head_global(recon[:, :, :n_hg]), self.map_global, cfg.segment
        )
        pred_l = self._to_samples(
            self.head_local(recon[:, :, n_hg:]), self.map_local, cfg.local_segment
        )
        return xn, pred_g, pred_l

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic scores of windows ``(B, L, T)``: point ``(B, T)`` and window ``(B,)``."""
        cfg = self.cfg
        xn, pred_g, pred_l = self.reconstruct(windows)
        x = xn.unsqueeze(2)
        err_g = ((pred_g - x) ** 2).mean(1) * self.mask_global  # (B, K, T)
        err_l = ((pred_l - x) ** 2).mean(1) * self.mask_local
        point = (err_g.sum(1) + cfg.local_weight * err_l.sum(1)) / self.weight
        top = max(1, int(round(cfg.topk_frac * cfg.window)))
        window = torch.topk(point, top, dim=1).values.mean(1)
        return point, window


def masked_r2(model: MMAE, windows: torch.Tensor, batch: int = 128) -> dict[str, float]:
    """How much of the hidden signal the deterministic passes explain, per scale.

    ``windows`` ``(N, L, T)`` (normal ECG). For the hidden samples of each scale, ``r2_zero`` is
    ``1 - SSE(reconstruction) / SSE(predicting zero)`` (zero is the window's mean after the
    model's centring) and ``r2_mean`` is ``1 - SSE(reconstruction) / SSE(predicting the mean of
    the samples visible in that pass)``. A model that outputs zeros scores about 0 on both; one
    that outputs the visible mean scores 0 on ``r2_mean``. Keys: ``global_r2_zero``,
    ``global_r2_mean``, ``local_r2_zero``, ``local_r2_mean``.
    """
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            xn, pred_g, pred_l = model.reconstruct(windows[i : i + batch])
            x = xn.unsqueeze(2)  # (B, L, 1, T)
            hidden = (model.mask_global + model.mask_local) > 0  # (K, T)
            vis = (~hidden).to(x.dtype)
            vis_mean = (x * vis).sum(-1, keepdim=True) / vis.sum(-1, keepdim=True)  # (B, L, K, 1)
            for scale, pred, mask in (("global", pred_g, model.mask_global),
                                      ("local", pred_l, model.mask_local)):  # fmt: skip
                for name, err in (("pred", pred - x), ("zero", x.expand_as(pred)),
                                  ("mean", vis_mean - x)):  # fmt: skip
                    key = f"{scale}_{name}"
                    sums[key] = sums.get(key, 0.0) + float(((err**2) * mask).sum())
    out = {}
    for scale in ("global", "local"):
        out[f"{scale}_r2_zero"] = 1.0 - sums[f"{scale}_pred"] / sums[f"{scale}_zero"]
        out[f"{scale}_r2_mean"] = 1.0 - sums[f"{scale}_pred"] / sums[f"{scale}_mean"]
    return out


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def estimate_macs(model: MMAE) -> int:
    """Multiply-accumulates of one inference window (linear layers and attention products)."""
    cfg = model.cfg
    k, nv = model.keep.shape
    nh = model.hide_global.shape[1] + model.hide_local.shape[1]
    d = cfg.dim
    hidden = int(d * cfg.mlp_ratio)
    block = lambda n: n * (4 * d * d + 2 * d * hidden) + 2 * n * n * d  # noqa: E731
    embed = cfg.window * cfg.n_leads * d * 2
    enc = cfg.depth * block(nv)
    dec = block(nv + nh)
    heads = nh * d * cfg.n_leads * cfg.segment
    prompt = 0
    if cfg.prompt_periods:  # per pass and scale: lag matching, then the prompt embedding
        ch, n_off = 2 * cfg.prompt_periods, model.prompt_offsets.shape[0]
        prompt = 2 * (
            ch * n_off * cfg.window * 3 * cfg.n_leads + cfg.window * (cfg.n_leads + 1) * ch * d
        )
    return int(embed + k * (enc + dec + heads + prompt))
