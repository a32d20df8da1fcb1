"""Why MMAE-ECG sat on the predict-zero plateau: short runs, masked R² against trivial predictors.

Trains a few hundred steps per variant on normal windows of the DEV training records (MIT-BIH
DS1: 108 109 112 115 116 122 203 207 208 230) and reports, on normal windows of the validation
records (114 118 124 205 220), the masked R² per scale against predicting zero and the visible
mean (``ecgstream.models.mmae.masked_r2``). The variant ``segnorm`` is the former loss (MSE on
per-segment-normalised targets): its R² is given in its own normalised space (loss of the model
against the loss of a network that outputs zeros), which is what the former model could learn.

    PYTHONPATH=. nice -n 10 python research/mmae/plateau.py --steps 300 [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ecgstream.models.mmae import MMAE, MMAEConfig, masked_r2
from ecgstream.models.token_core import gather_tokens
from ecgstream.training.data import normal_starts
from ecgstream.training.trainer import sample_windows
from research.mmae.data import VAL, load_dev


class SegNormMMAE(MMAE):
    """The former loss: targets standardised per hidden segment (``eps`` 0.05 mV^2)."""

    @staticmethod
    def _norm(seg):
        mu = seg.mean(-1, keepdim=True)
        return (seg - mu) / (seg.var(-1, unbiased=False, keepdim=True) + 0.05).sqrt()

    def loss(self, x, generator=None, zero=False):
        xn = self.normalise(x)
        tokens, pos, seg_g, seg_l = self.tokens(xn)
        keep, hide_g, hide_l = self.training_masks(x.shape[0], generator)
        recon = self.core(tokens, pos, keep, torch.cat([hide_g, hide_l + self.cfg.n_global], 1))
        n = hide_g.shape[1]
        pred_g, pred_l = self.head_global(recon[:, :n]), self.head_local(recon[:, n:])
        if zero:
            pred_g, pred_l = pred_g * 0, pred_l * 0
        lg = ((pred_g - self._norm(gather_tokens(seg_g, hide_g))) ** 2).mean()
        ll = ((pred_l - self._norm(gather_tokens(seg_l, hide_l))) ** 2).mean()
        return (lg + ll) / 2


def sincos(centres: torch.Tensor, dim: int, period: float = 2000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(1, N, dim)`` of token centres (samples), same clock at both scales."""
    freq = 1.0 / period ** (2 * torch.arange(dim // 2) / dim)
    a = centres[:, None] * freq[None]
    return torch.cat([a.sin(), a.cos()], 1)[None]


class SinCosMMAE(MMAE):
    """Positional embeddings initialised from each token's time instead of small random values."""

    def __init__(self, cfg):
        super().__init__(cfg)
        with torch.no_grad():
            g, loc = cfg.segment, cfg.local_segment
            self.pos_global.copy_(sincos(torch.arange(cfg.n_global) * g + g / 2, cfg.dim))
            self.pos_local.copy_(sincos(torch.arange(cfg.n_local) * loc + loc / 2, cfg.dim))


class ZeroHeadMMAE(MMAE):
    """Output heads initialised at zero: training starts from the zero predictor."""

    def __init__(self, cfg):
        super().__init__(cfg)
        with torch.no_grad():
            for head in (self.head_global, self.head_local):
                head.weight.zero_()
                head.bias.zero_()


#: one segment in four hidden, in training and at inference (where beat copies stay visible)
SPARSE = {
    "segment": 20,
    "local_region": 10,
    "mask_global": 0.25,
    "mask_local": 0.25,
    "infer_global_masks": 4,
    "infer_local_masks": 4,
}

VARIANTS = {
    # name: (model class, config overrides, lr)
    "segnorm-seg40": (SegNormMMAE, {"segment": 40}, 2e-3),
    "raw-seg40": (MMAE, {"segment": 40}, 2e-3),
    "raw-seg40-lr5e-4": (MMAE, {"segment": 40}, 5e-4),
    "raw-seg40-sincos": (SinCosMMAE, {"segment": 40}, 2e-3),
    # trained and evaluated on the same 64 windows: can it even fit them?
    "raw-seg40-overfit64": (MMAE, {"segment": 40}, 1e-3),
    "raw-seg20-mask0.25": (MMAE, SPARSE, 2e-3),
    "zerohead-overfit64": (ZeroHeadMMAE, {"segment": 40}, 1e-3),
    "zerohead-seg40": (ZeroHeadMMAE, {"segment": 40}, 2e-3),
    "zerohead-seg20-mask0.25": (ZeroHeadMMAE, SPARSE, 2e-3),
    "raw-seg20": (MMAE, {"segment": 20, "local_region": 10}, 2e-3),
    "raw-seg10": (MMAE, {"segment": 10, "local_region": 20}, 2e-3),
}


def windows(recs, names, n, seed):
    rs = [recs[k] for k in names]
    starts = [normal_starts(r, 1000) for r in rs]
    return sample_windows(rs, starts, n, 1000, np.random.default_rng(seed))


def fit_steps(model, train: np.ndarray, steps: int, lr: float, batch: int = 64) -> float:
    """Train ``model`` for ``steps`` AdamW steps (one-cycle schedule, seeded batches from
    ``train``); returns the wall time in seconds."""
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
    return time.perf_counter() - t0


def run(name, steps, train, val, batch=64):
    cls, over, lr = VARIANTS[name]
    if name.endswith("overfit64"):
        train = val = train[:64]
    torch.manual_seed(0)
    model = cls(MMAEConfig(**over))
    seconds = fit_steps(model, train, steps, lr, batch)
    row = {"variant": name, "steps": steps, "seconds": round(seconds, 1)}
    v = torch.from_numpy(val)
    if cls is SegNormMMAE:
        model.eval()
        with torch.no_grad():
            lm = float(model.loss(v, torch.Generator().manual_seed(1)))
            lz = float(model.loss(v, torch.Generator().manual_seed(1), zero=True))
        row.update(
            segnorm_loss=round(lm, 4), zero_loss=round(lz, 4), r2_normalised=round(1 - lm / lz, 4)
        )
    else:
        row.update({k: round(x, 4) for k, x in masked_r2(model, v).items()})
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)  # faster than 2 on a shared 2-core machine
    recs = load_dev()
    train_names = [k for k in recs if k not in VAL]
    train = windows(recs, train_names, 4096, 0)
    val = windows(recs, VAL, 256, 1)
    for name in args.only or VARIANTS:
        print(json.dumps(run(name, args.steps, train, val)), flush=True)


if __name__ == "__main__":
    main()
