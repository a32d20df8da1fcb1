"""Which part of the spectrogram carries the beat classes? Learning-free column scores.

The fixed-scale spectrogram front end (normalisation fitted on the normal windows of the fold's
training records) and a column score, exported with the graph interface and scored on the
held-out DEV records like the models of ``cv_mitdb.py``, beside the segment energy:

- ``zmax``: max over frequency rows of the normalised log-magnitude;
- ``zmean``: mean over rows; ``zlow``: mean over rows below ``--split-hz``;
  ``zhigh``: mean over rows above it;
- ``absmax``: max over rows of its absolute value.

    nice -n 10 python research/image/frontend_scores.py --fold 2 --out research/image/results/frontend_f2.json
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


class ColumnScore(nn.Module):
    def __init__(self, frontend, window: int, rows: slice, how: str):
        super().__init__()
        self.frontend, self.window, self.rows, self.how = frontend, window, rows, how

    def forward(self, windows):
        z = self.frontend(windows)[:, 0, self.rows]  # (B, F', T)
        if self.how == "max":
            col = z.max(1).values
        elif self.how == "absmax":
            col = z.abs().max(1).values
        else:
            col = z.mean(1)
        point = F.interpolate(col[:, None], size=self.window, mode="linear", align_corners=False)
        return point[:, 0], col.max(1).values


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fold", type=int, default=2)
    ap.add_argument("--split-hz", type=float, default=15.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from ecgstream.evaluation.splits import MITDB_DEV
    from ecgstream.models.frontends import SpectrogramFrontend
    from ecgstream.training.config import TrainConfig
    from ecgstream.training.image import _record_windows, export_detector
    from ecgstream.training.trainer import prepare_data, record_spec

    torch.set_num_threads(1)
    held = list(FOLDS[args.fold])
    train = [r for r in MITDB_DEV if r not in held]
    cfg = TrainConfig(model="pbas", leads=["MLII"], records=train, val_records=train[:2],
                      fs=100.0, window_s=4.0, hop_s=2.0, threads=1)  # fmt: skip
    tr, va = prepare_data(cfg, [MITDB])
    wins = _record_windows(tr, cfg.window, 2000, np.random.default_rng(0))
    fe = SpectrogramFrontend(1, cfg.window, 32, 4, "fixed")
    fe.fit_norm(wins)
    split = int(args.split_hz / (100.0 / 32))
    variants = {
        "zmax": ColumnScore(fe, cfg.window, slice(None), "max"),
        "absmax": ColumnScore(fe, cfg.window, slice(None), "absmax"),
        "zmean": ColumnScore(fe, cfg.window, slice(None), "mean"),
        "zlow": ColumnScore(fe, cfg.window, slice(0, split), "mean"),
        "zhigh": ColumnScore(fe, cfg.window, slice(split, None), "mean"),
        "energy": EnergyDetector(cfg.window),
    }
    spec = record_spec(cfg, "pbas", tr, va, {"center": 0.0, "scale": 1.0}, {"default": 1.0},
                       training={}, params={}, name="diag", frontend="spectrogram")  # fmt: skip
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, module in variants.items():
            path = export_detector(module.eval(), spec, Path(tmp) / f"{name}.onnx")
            report[name] = figures(*beat_table(path, held, MITDB))
            print(name, {k: round(v, 3) for k, v in report[name].items()}, flush=True)
    args.out.write_text(json.dumps({"fold": held, "figures": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
