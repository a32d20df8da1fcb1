"""Cross-validate population-reference settings of the 12-lead consensus detector on PTB-XL.

Only folds 1-6 are read (folds 7-8 are TEST and never touched; 9-10 are not in the DEV folder).
For each variant: the reference is fitted on the NORM-only ECGs of folds 1-5 and scored on fold 6
(the validation fold), and leave-one-fold-out over folds 1-6 fits it on the NORM-only ECGs of the
other five folds and scores the held-out fold. The figure is the record AUROC (NORM-only vs any
other diagnostic superclass). A PTB-XL ECG is 10 s, one model window, so the record score is that
window's score whatever the hop.

    python research/tune_ptbxl_population.py [--data ../shared/data/ptbxl-dev] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ecgstream.evaluation.metrics import auroc
from ecgstream.models.consensus import ConsensusConfig, SegmentConsensus
from ecgstream.training.config import TrainConfig, load_train_config
from ecgstream.training.consensus import consensus_config
from ecgstream.training.data import collect_records, load_record
from ecgstream.training.trainer import preprocess_config

REPO = Path(__file__).resolve().parents[1]
FOLDS = (1, 2, 3, 4, 5, 6)
SPECTRUM = {
    "population_spectrum_frame": 200,
    "population_spectrum_bands": 29,
    "population_spectrum_band_bins": 2,
}
VARIANTS: dict[str, dict] = {
    "in-window term only": {"population_components": 0},
    "PCA 8 (shipped)": {"population_components": 8},
    "PCA 8, per-lead scale": {"population_components": 8, "population_lead_scale": True},
    "PCA 32": {"population_components": 32},
    "shrunk (Ledoit-Wolf)": {"population_components": 160, "population_covariance": "shrunk"},
    "shrunk, per-lead scale": {
        "population_components": 160,
        "population_covariance": "shrunk",
        "population_lead_scale": True,
    },
    "PCA 8, per-lead scale, + spectrum": {
        "population_components": 8,
        "population_lead_scale": True,
        **SPECTRUM,
    },
    "shrunk, per-lead scale, + spectrum": {
        "population_components": 160,
        "population_covariance": "shrunk",
        "population_lead_scale": True,
        **SPECTRUM,
    },
}


def load(
    data: Path, toml: Path, folds: tuple[int, ...] = FOLDS
) -> tuple[TrainConfig, torch.Tensor, np.ndarray, np.ndarray]:
    """Preprocessed windows ``(N, 12, 1000)``, labels and folds of the labelled ECGs of
    ``folds`` (here 1-6), in ``collect_records`` order."""
    cfg = load_train_config(toml, environ={})
    pre = preprocess_config(cfg)
    items = [(p, m) for p, m in collect_records([data], cfg.ptbxl_resolution)
             if m and m["fold"] in folds and m["label"] >= 0]  # fmt: skip
    x, label, fold = [], [], []
    for p, m in items:
        rec = load_record(p, cfg.leads, pre, cfg.window, cfg.normal_margin_s, m["label"])
        x.append(rec.x[: cfg.window].T)
        label.append(m["label"])
        fold.append(m["fold"])
    return cfg, torch.tensor(np.stack(x)), np.array(label), np.array(fold)


def scores(base: ConsensusConfig, over: dict, x: torch.Tensor, fit: np.ndarray) -> np.ndarray:
    """Record scores of all ``x`` with the reference fitted on the rows where ``fit`` is true."""
    model = SegmentConsensus(ConsensusConfig(**{**base.to_dict(), **over})).eval()
    model.fit_population(x[torch.from_numpy(fit)])
    with torch.no_grad():
        return model(x)[1].numpy().astype(np.float64)


def run(base: ConsensusConfig, over: dict, x, label, fold) -> dict:
    """Fold-6 AUROC (fit on folds 1-5) and leave-one-fold-out AUROC over folds 1-6."""
    normal = label == 0
    s6 = scores(base, over, x, (fold <= 5) & normal)
    per_fold, pooled = [], np.zeros(len(label))
    for f in FOLDS:
        s = scores(base, over, x, (fold != f) & normal)
        held = fold == f
        per_fold.append(auroc(label[held], s[held]))
        pooled[held] = s[held] / np.median(s[~held & normal])  # comparable across fits
    return {
        "fold6": auroc(label[fold == 6], s6[fold == 6]),
        "lofo_mean": float(np.mean(per_fold)),
        "lofo_sd": float(np.std(per_fold)),
        "lofo_min": float(np.min(per_fold)),
        "lofo_pooled": auroc(label, pooled),
        "per_fold": [round(float(a), 3) for a in per_fold],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/ptbxl-dev")
    ap.add_argument("--config", type=Path, default=REPO / "models/consensus-ptbxl.toml")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    cfg, x, label, fold = load(args.data, args.config)
    base = consensus_config(cfg)
    print(f"{len(label)} ECGs of folds 1-6 ({int((label == 0).sum())} NORM-only)")
    print("| variant | fold 6 | LOFO mean ± sd | LOFO min | LOFO pooled | folds 1..6 |")
    print("|---|---|---|---|---|---|")
    results = {}
    for name, over in VARIANTS.items():
        r = results[name] = run(base, over, x, label, fold)
        print(f"| {name} | {r['fold6']:.3f} | {r['lofo_mean']:.3f} ± {r['lofo_sd']:.3f} | "
              f"{r['lofo_min']:.3f} | {r['lofo_pooled']:.3f} | "
              f"{' '.join(f'{a:.2f}' for a in r['per_fold'])} |", flush=True)  # fmt: skip
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
