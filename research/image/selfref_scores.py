"""Does a within-window self-reference on the spectrogram beat the segment energy? Learning-free.

For each held-out DEV fold (the folds of ``cv_mitdb.py``), the fixed-scale spectrogram front end is
fitted on the normal windows of the other ten records and these column scores are exported with
the graph interface and scored on the five held-out records like the models:

- ``zmax``: max over frequency rows of the normalised log-magnitude (a population scale);
- ``nn``: distance of each column's patch (``--patch`` columns, all rows) to its nearest patch of
  the same window outside +-``--exclude-s`` seconds: a beat compared with the window's other beats;
- ``energy``: the segment energy of ``cv_mitdb.py``.

Variants of the STFT (``n_fft/hop`` pairs, samples at 100 Hz) are given with ``--stft``.

    nice -n 10 python research/image/selfref_scores.py --out research/image/results/selfref.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from cv_mitdb import FOLDS, MITDB, EnergyDetector, beat_table, figures
from torch import nn
from torch.nn import functional as F


def column_nn(z: torch.Tensor, eye: torch.Tensor, patch: int, exclude: int) -> torch.Tensor:
    """``z`` ``(B, F, T)`` -> ``(B, T)``: RMS distance of each column's patch to its nearest
    patch of the window more than ``exclude`` columns away (``eye``: the unfold kernel)."""
    b, f, t = z.shape
    v = F.conv1d(F.pad(z, (patch // 2, patch - 1 - patch // 2), mode="replicate"), eye)
    v = v.transpose(1, 2)  # (B, T, F*patch)
    sq = (v * v).sum(-1)
    d2 = sq[:, :, None] + sq[:, None, :] - 2 * v @ v.transpose(1, 2)
    idx = torch.arange(t)
    near = (idx[:, None] - idx[None, :]).abs() <= exclude
    d2 = d2.masked_fill(near, 1e9)
    return (d2.min(-1).values.clamp_min(0) / (f * patch)).sqrt()


class ColumnScore(nn.Module):
    def __init__(self, frontend, window: int, how: str, patch: int = 3, exclude: int = 8):
        super().__init__()
        self.frontend, self.window, self.how = frontend, window, how
        self.patch, self.exclude = patch, exclude
        f = frontend.n_freq
        self.register_buffer("eye", torch.eye(f * patch).reshape(f * patch, f, patch))
        self.register_buffer("scales", torch.ones(2))

    @torch.no_grad()
    def fit_memory(self, windows: torch.Tensor, size: int = 4096) -> ColumnScore:
        z = self.frontend(windows)[:, 0]
        v = F.conv1d(F.pad(z, (self.patch // 2, (self.patch - 1) // 2), mode="replicate"), self.eye)
        v = v.transpose(1, 2).reshape(-1, v.shape[1])
        pick = torch.randperm(len(v), generator=torch.Generator().manual_seed(0))[:size]
        self.register_buffer("memory", v[pick].clone())
        return self

    @torch.no_grad()
    def fit_scales(self, windows: torch.Tensor) -> ColumnScore:
        z = self.frontend(windows)[:, 0]
        zmax = z.max(1).values.clamp_min(0).mean()
        self.scales.copy_(
            torch.stack([zmax, column_nn(z, self.eye, self.patch, self.exclude).mean()])
        )
        return self

    def forward(self, windows):
        z = self.frontend(windows)[:, 0]  # (B, F, T)
        if self.how == "zmax":
            col = z.max(1).values
        elif self.how == "pop":  # nearest training patch (a population memory), RMS distance
            v = F.conv1d(
                F.pad(z, (self.patch // 2, (self.patch - 1) // 2), mode="replicate"), self.eye
            ).transpose(1, 2)
            d2 = (v * v).sum(-1, keepdim=True) - 2 * v @ self.memory.T + (self.memory**2).sum(1)
            col = (d2.min(-1).values.clamp_min(0) / v.shape[-1]).sqrt()
        elif self.how == "nn":
            col = column_nn(z, self.eye, self.patch, self.exclude)
        else:  # both, each in units of its mean on the training normals
            col = (
                z.max(1).values.clamp_min(0) / self.scales[0]
                + column_nn(z, self.eye, self.patch, self.exclude) / self.scales[1]
            )
        point = F.interpolate(col[:, None], size=self.window, mode="linear", align_corners=False)
        return point[:, 0], col.max(1).values


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--protocol", action="store_true", help="MITDB_CV_FOLDS (--folds 0-4)")
    ap.add_argument("--stft", nargs="+", default=["32/4"])
    ap.add_argument("--patch-s", type=float, default=0.12)
    ap.add_argument("--exclude-s", type=float, default=0.3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from ecgstream.evaluation.splits import MITDB_DEV, mitdb_cv_folds
    from ecgstream.models.frontends import SpectrogramFrontend
    from ecgstream.training.config import TrainConfig
    from ecgstream.training.image import ECG_SPECTROGRAM_MAX_HZ, _record_windows, export_detector
    from ecgstream.training.trainer import prepare_data, record_spec

    torch.set_num_threads(1)
    collected: dict = {}
    for f in args.folds:
        if args.protocol:
            fold = mitdb_cv_folds()[f]
            held, train, val = list(fold.held_out), list(fold.train + fold.val), list(fold.val)
        else:
            held = list(FOLDS[f])
            train = [r for r in MITDB_DEV if r not in held]
            val = train[:2]
        cfg = TrainConfig(model="pbas", leads=["MLII"], records=train, val_records=val,
                          fs=100.0, window_s=4.0, hop_s=2.0, threads=1)  # fmt: skip
        tr, va = prepare_data(cfg, [MITDB])
        wins = _record_windows(tr, cfg.window, 2000, np.random.default_rng(0))
        variants = {"energy": EnergyDetector(cfg.window)}
        for pair in args.stft:
            n_fft, hop = (int(x) for x in pair.split("/"))
            rows = int(ECG_SPECTROGRAM_MAX_HZ / (cfg.fs / n_fft)) + 1
            fe = SpectrogramFrontend(1, cfg.window, n_fft, hop, "fixed", rows)
            fe.fit_norm(wins)
            patch = max(1, round(args.patch_s * cfg.fs / hop))
            exclude = round(args.exclude_s * cfg.fs / hop)
            variants[f"zmax {pair}"] = ColumnScore(fe, cfg.window, "zmax")
            variants[f"nn {pair}"] = ColumnScore(fe, cfg.window, "nn", patch, exclude)
            variants[f"pop {pair}"] = ColumnScore(fe, cfg.window, "pop", patch, exclude).fit_memory(
                torch.from_numpy(wins)
            )
            coarse = SpectrogramFrontend(1, cfg.window, n_fft, hop * 4, "fixed", rows)
            coarse.fit_norm(wins)
            variants[f"pop coarse {pair}"] = ColumnScore(
                coarse, cfg.window, "pop", 1, max(1, exclude // 4)
            ).fit_memory(torch.from_numpy(wins))
            variants[f"both {pair}"] = ColumnScore(
                fe, cfg.window, "both", patch, exclude
            ).fit_scales(torch.from_numpy(wins[:500]))
        spec = record_spec(cfg, "pbas", tr, va, {"center": 0.0, "scale": 1.0}, {"default": 1.0},
                           training={}, params={}, name="diag", frontend="spectrogram")  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            for name, module in variants.items():
                path = export_detector(module.eval(), spec, Path(tmp) / f"v{len(name)}.onnx")
                s, sym = beat_table(path, held, MITDB)
                c = collected.setdefault(name, {"s": [], "sym": [], "folds": []})
                c["s"].append(s)
                c["sym"].append(sym)
                c["folds"].append(figures(s, sym))
                print(f"fold {f} {name}", {k: round(v, 3) for k, v in c["folds"][-1].items()},
                      flush=True)  # fmt: skip
    report = {}
    for name, c in collected.items():
        pooled = figures(np.concatenate(c["s"]), np.concatenate(c["sym"]))
        report[name] = {"pooled": pooled, "folds": c["folds"]}
        print(name, "pooled", {k: round(v, 3) for k, v in pooled.items()},
              "folds", [round(x["beat"], 3) for x in c["folds"]])  # fmt: skip
    args.out.write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "figures": report}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
