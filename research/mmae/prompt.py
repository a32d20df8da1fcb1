"""MMAE-ECG prompted with the patient's own rhythm: does copying the aligned beat lift masked R²?

Hypothesis (issue 22 item 2, inside the window): a hidden segment is mostly QRS that its
neighbours do not show, but the same patient's beat one or two periods away does. So give the
network, for every token, the signal one and two beat periods before and after it (``x(t -+ jP)``,
``j = 1..k``), each with its own visibility mask, computed from the VISIBLE samples only:

1. the window's period ``P``: dissimilarity of the visible envelope (``|x|`` averaged over 5
   samples, 20 Hz) with itself over lags 0.3-1.5 s, hidden samples zeroed and each lag's overlap
   normalised; the first minimum within 1.3 times the lowest
   (:func:`ecgstream.models.consensus.rhythm.first_period`, the consensus detector's pick);
2. per token and direction, the lag within ``jP +- refine`` samples (step ``refine_step``) whose
   shifted signal best matches the visible samples in the token's span and ``margin`` samples
   around it (beat-to-beat variation of the RR interval);
3. the aligned prompt values and masks enter each token's embedding (visible tokens and the
   decoder's hidden queries), and the mean of the available aligned values is added to the
   output heads' prediction (a copy path the heads correct).

Everything is argmin/argmax, gathers and pooling (exports to ONNX). Trains a few hundred steps on
normal windows of the DEV training records (108 109 112 115 116 122 203 207 208 230) and reports
masked R² per scale on normal windows of the validation records (114 118 124 205 220) against
predicting zero and the visible mean (``ecgstream.models.mmae.masked_r2``), for the current model,
the prompted one, and the prompted one with one segment in four hidden; ``copy-only`` rows are
the same networks with zero output heads (the prompt copy alone, no learning).

    PYTHONPATH=. nice -n 10 python research/mmae/prompt.py --steps 300 > research/mmae/results/prompt.log
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch.nn import functional as F

from ecgstream.models.consensus.rhythm import first_period
from ecgstream.models.mmae import MMAE, MMAEConfig, masked_r2
from ecgstream.models.token_core import gather_tokens
from research.mmae.data import VAL, load_dev
from research.mmae.plateau import windows

DECIMATE = 5  # envelope rate: 100 Hz / 5 = 20 Hz


def shifted(
    x: torch.Tensor, vis: torch.Tensor, lag: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x(t - lag)`` and its visibility for ``x`` ``(B, L, T)``, ``vis`` ``(B, T)``, ``lag``
    ``(B, C)`` samples (negative = later): ``(B, L, C, T)`` and ``(B, C, T)``, zero outside."""
    b, leads, t = x.shape
    idx = torch.arange(t, device=x.device)[None, None] - lag.round().long()[..., None]  # (B, C, T)
    inside = ((idx >= 0) & (idx < t)).to(x.dtype)
    idx = idx.clamp(0, t - 1)
    v = torch.gather(vis[:, None].expand(-1, lag.shape[1], -1), 2, idx) * inside
    xs = torch.gather(x[:, :, None].expand(-1, -1, lag.shape[1], -1), 3,
                      idx[:, None].expand(-1, leads, -1, -1))  # fmt: skip
    return xs * v[:, None], v


class PromptMMAE(MMAE):
    """MMAE-ECG whose tokens also carry the signal one to ``periods`` beat periods away."""

    def __init__(self, cfg: MMAEConfig, periods: int = 2, refine: int = 10, refine_step: int = 2,
                 margin: int = 20, min_lag: float = 0.3, max_lag: float = 1.5, fs: float = 100.0):  # fmt: skip
        super().__init__(cfg)
        self.periods, self.margin = periods, margin
        d, leads = cfg.dim, cfg.n_leads
        ch = 2 * periods  # directions -P, +P, -2P, +2P, ...
        self.embed_prompt_global = torch.nn.Linear(ch * (leads + 1) * cfg.segment, d)
        self.embed_prompt_local = torch.nn.Linear(ch * (leads + 1) * cfg.local_segment, d)
        lags = torch.arange(round(min_lag * fs / DECIMATE), round(max_lag * fs / DECIMATE) + 1)
        self.register_buffer("env_lags", lags.float(), persistent=False)
        self.lag_list = lags.tolist()
        self.register_buffer(
            "offsets", torch.arange(-refine, refine + 1, refine_step), persistent=False
        )
        # direction j: sign and multiple of P
        mult = torch.tensor([(1 if i % 2 == 0 else -1) * (i // 2 + 1) for i in range(ch)])
        self.register_buffer("mult", mult, persistent=False)

    # -- the prompt ---------------------------------------------------------------------------
    def period(self, x: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        """Beat period ``(B, 1)`` in samples from the visible samples of ``x`` ``(B, L, T)``."""
        e = F.avg_pool1d(x.abs() * vis[:, None], DECIMATE)
        w = F.avg_pool1d(vis[:, None], DECIMATE)  # (B, 1, T/5)
        e = e / w.clamp_min(1e-3)
        num, den = [], []
        for lag in self.lag_list:
            ww = w[..., lag:] * w[..., :-lag]
            a, b = e[..., lag:], e[..., :-lag]
            num.append((ww * (a - b) ** 2).sum((1, 2)))
            den.append((ww * (a * a + b * b)).sum((1, 2)))
        profile = torch.stack(num, 1) / (torch.stack(den, 1) + 1e-6)
        return first_period(profile, self.env_lags) * DECIMATE

    def prompt(
        self, x: torch.Tensor, vis: torch.Tensor, seg: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned prompt values ``(B, L, C, T)`` and masks ``(B, C, T)`` for tokens of ``seg``
        samples: per token and direction the lag within ``jP + offsets`` that best matches the
        visible samples in and around the token."""
        b, leads, t = x.shape
        p = self.period(x, vis)  # (B, 1)
        n_off, ch = len(self.offsets), len(self.mult)
        base = self.mult[None, :, None] * p[:, :, None]  # (B, C, 1)
        lag = (base + torch.sign(self.mult)[None, :, None] * self.offsets[None, None]).reshape(
            b, -1
        )
        xs, vs = shifted(x, vis, lag)  # (B, L, C*O, T), (B, C*O, T)
        both = vs * vis[:, None]
        diff = (((x[:, :, None] - xs) ** 2).sum(1) * both)[:, :, None]  # (B, C*O, 1, T)
        energy = ((x[:, :, None] ** 2 + xs**2).sum(1) * both)[:, :, None]
        k, m = seg + 2 * self.margin, self.margin
        pool = lambda v: F.avg_pool1d(v.reshape(-1, 1, t), k, seg, m).reshape(b, ch, n_off, -1)  # noqa: E731
        overlap = pool(both[:, :, None])
        cost = pool(diff) / (pool(energy) + 1e-4) + (overlap < 0.1).to(x.dtype) * 10.0
        best = cost.argmin(2)  # (B, C, n_tokens)
        best = best.repeat_interleave(seg, 2)  # (B, C, T)
        xs = xs.reshape(b, leads, ch, n_off, t)
        vs = vs.reshape(b, ch, n_off, t)
        pv = torch.gather(xs, 3, best[:, None, :, None].expand(-1, leads, -1, -1, -1)).squeeze(3)
        pm = torch.gather(vs, 2, best[:, :, None]).squeeze(2)
        return pv, pm

    def prompt_tokens(self, x: torch.Tensor, vis: torch.Tensor):
        """Prompt embeddings of both scales ``(B, N, D)`` and the copy ``(B, L, T)`` per scale."""
        out, copies = [], []
        for seg, embed in ((self.cfg.segment, self.embed_prompt_global),
                           (self.cfg.local_segment, self.embed_prompt_local)):  # fmt: skip
            pv, pm = self.prompt(x, vis, seg)
            b, leads, ch, t = pv.shape
            feats = torch.cat([pv.reshape(b, leads * ch, t), pm], 1)  # (B, (L+1)C, T)
            out.append(embed(self.segments(feats, seg)))
            copies.append(pv.sum(2) / pm.sum(1, keepdim=True).clamp_min(1.0))
        return torch.cat(out, 1), copies

    # -- training -----------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.cfg
        xn = self.normalise(x)
        b, _, t = xn.shape
        keep, hide_g, hide_l = self.training_masks(b, generator)
        hid = (
            torch.zeros(b, cfg.n_global).scatter_(1, hide_g, 1.0).repeat_interleave(cfg.segment, 1)
        )
        hid_l = torch.zeros(b, cfg.n_local).scatter_(1, hide_l, 1.0)
        hid = torch.maximum(hid, hid_l.repeat_interleave(cfg.local_segment, 1))
        vis = 1.0 - hid
        xv = xn * vis[:, None]
        tokens, pos, seg_g, seg_l = self.tokens(xv)
        ptok, (copy_g, copy_l) = self.prompt_tokens(xv, vis)
        tokens = tokens + ptok
        pos_b = pos.expand(b, -1, -1)
        memory = self.core.encode(gather_tokens(tokens + pos_b, keep))
        hide_tok = torch.cat([hide_g, hide_l + cfg.n_global], 1)
        recon = self.core.decode(memory, gather_tokens(pos_b + ptok, hide_tok))
        n_hg = hide_g.shape[1]
        seg_g, seg_l = self.segments(xn, cfg.segment), self.segments(xn, cfg.local_segment)
        pred_g = self.head_global(recon[:, :n_hg]) + gather_tokens(
            self.segments(copy_g, cfg.segment), hide_g
        )
        pred_l = self.head_local(recon[:, n_hg:]) + gather_tokens(
            self.segments(copy_l, cfg.local_segment), hide_l
        )
        loss_g = ((pred_g - gather_tokens(seg_g, hide_g)) ** 2).mean()
        loss_l = ((pred_l - gather_tokens(seg_l, hide_l)) ** 2).mean()
        return (loss_g + cfg.local_weight * loss_l) / (1.0 + cfg.local_weight)

    # -- inference ----------------------------------------------------------------------------
    def reconstruct(self, windows: torch.Tensor):
        cfg = self.cfg
        b, leads, t = windows.shape
        k = self.n_passes
        xn = self.normalise(windows)
        hidden = ((self.mask_global + self.mask_local) > 0).to(xn.dtype)  # (K, T)
        vis = (1.0 - hidden)[None].expand(b, -1, -1).reshape(b * k, t)
        xk = xn[:, None].expand(-1, k, -1, -1).reshape(b * k, leads, t) * vis[:, None]
        tokens, pos, _, _ = self.tokens(xk)
        ptok, (copy_g, copy_l) = self.prompt_tokens(xk, vis)
        tokens = tokens + ptok
        d = tokens.shape[-1]
        keep = self.keep[None].expand(b, -1, -1).reshape(b * k, -1)
        memory = self.core.encode(gather_tokens(tokens + pos, keep))
        hide_tok = torch.cat([self.hide_global, self.hide_local + cfg.n_global], 1)
        hide_b = hide_tok[None].expand(b, -1, -1).reshape(b * k, -1)
        recon = self.core.decode(memory, gather_tokens(pos.expand(b * k, -1, -1) + ptok, hide_b))
        recon = recon.reshape(b, k, -1, d)
        n_hg = self.hide_global.shape[1]
        hg = self.hide_global[None].expand(b, -1, -1).reshape(b * k, -1)
        hl = self.hide_local[None].expand(b, -1, -1).reshape(b * k, -1)
        cg = gather_tokens(self.segments(copy_g, cfg.segment), hg).reshape(b, k, n_hg, -1)
        cl = gather_tokens(self.segments(copy_l, cfg.local_segment), hl).reshape(
            b, k, hl.shape[1], -1
        )
        pred_g = self._to_samples(
            self.head_global(recon[:, :, :n_hg]) + cg, self.map_global, cfg.segment
        )
        pred_l = self._to_samples(
            self.head_local(recon[:, :, n_hg:]) + cl, self.map_local, cfg.local_segment
        )
        return xn, pred_g, pred_l


SPARSE = {
    "segment": 20,
    "local_region": 10,
    "mask_global": 0.25,
    "mask_local": 0.25,
    "infer_global_masks": 4,
    "infer_local_masks": 4,
}
VARIANTS = {
    # name: (prompt periods (0 = current model), config overrides, lr)
    "current-seg40": (0, {"segment": 40}, 2e-3),
    "prompt2-seg40": (2, {"segment": 40}, 2e-3),
    "prompt2-seg20-mask0.25": (2, SPARSE, 2e-3),
}


def zero_heads(model: MMAE) -> None:
    with torch.no_grad():
        for head in (model.head_global, model.head_local):
            head.weight.zero_()
            head.bias.zero_()


def run(name: str, steps: int, train: np.ndarray, val: np.ndarray, batch: int = 64) -> list[dict]:
    periods, over, lr = VARIANTS[name]
    torch.manual_seed(0)
    cfg = MMAEConfig(**over)
    model = PromptMMAE(cfg, periods) if periods else MMAE(cfg)
    v = torch.from_numpy(val)
    rows = []
    if periods:  # the copy path alone, before any training
        zero_heads(model)
        r2 = masked_r2(model, v, batch=8)
        rows.append({"variant": name + " copy-only", **{k: round(x, 4) for k, x in r2.items()}})
        torch.manual_seed(0)
        model = PromptMMAE(cfg, periods)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        x = torch.from_numpy(train[rng.integers(len(train), size=batch)])
        loss = model.loss(x, gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    row = {"variant": name, "steps": steps, "seconds": round(time.perf_counter() - t0, 1)}
    row.update({k: round(x, 4) for k, x in masked_r2(model, v, batch=8).items()})
    rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--val-windows", type=int, default=256)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)  # faster than 2 on a shared 2-core machine
    recs = load_dev()
    train = windows(recs, [k for k in recs if k not in VAL], 4096, 0)
    val = windows(recs, VAL, args.val_windows, 1)
    for name in args.only or VARIANTS:
        for row in run(name, args.steps, train, val):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
