"""Image heads on MIT-BIH spectrograms by leave-records-out cross-validation over DS1 DEV.

Each fold trains every image head (``ecgstream train --model KIND`` machinery, spectrogram front
end) on the normal windows of 10 DEV records (two of them calibrate the scores) and scores the 5
DEV records it never read, through the exported ONNX file and :class:`Scorer`, like a user.
The segment-energy score (the squared, window-centred signal averaged over 0.16 s, the same
windows and overlap averaging) is scored in the same run. TEST records are never read.

Per model: pooled beat AUROC over the 15 held-out records (a beat's score is the max point score
within +-150 ms), mean and spread of the per-fold figures, and S, V, F vs N.

    nice -n 10 python research/image/cv_mitdb.py --kinds pbas,uniad,onenip \\
        --set spec_scale=fixed --out research/image/results/cv_fixed.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[2]
MITDB = REPO.parent / "shared" / "data" / "mitdb-ds1"
#: the refiner study's folds (benchmarks/refiner_cv.py): 5 held-out DEV records each
FOLDS = (
    ("114", "118", "124", "205", "220"),
    ("108", "109", "112", "115", "116"),
    ("122", "203", "207", "208", "230"),
)
CLASSES = {"S": "AaJS", "V": "VE", "F": "F"}


class EnergyDetector(nn.Module):
    """Segment energy: squared window-centred signal summed over leads, averaged over ``width`` samples."""

    def __init__(self, window: int, width: int = 16):
        super().__init__()
        self.window, self.width = window, width

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = windows - windows.mean(-1, keepdim=True)
        e = (x * x).sum(1, keepdim=True)
        point = F.avg_pool1d(e, self.width, 1, self.width // 2, count_include_pad=False)
        point = point[..., : self.window][:, 0]
        return point, point.max(1).values


class HeadOnly(nn.Module):
    """A trained detector's head term alone (its self-reference left out)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        smap, _ = self.model.terms(windows)
        return self.model.maps_to_scores(smap)


class SelfRefOnly(nn.Module):
    """A trained detector's self-reference term alone (learning-free: the front end and its
    fitted normalisation only), upsampled and tapered like the detector's point score."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cols = self.model.self_ref(self.model.frontend(windows))
        return self.model._upsample(cols) * self.model.taper, cols.max(1).values


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def beat_table(model: Path, records: list[str], data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Beat scores and AAMI symbols of ``records`` scored by ``model`` (ONNX, through Scorer)."""
    from ecgstream.evaluation.metrics import beat_scores
    from ecgstream.runtime.scorer import Scorer
    from ecgstream.signals.labels import read_beats
    from ecgstream.signals.records import read_record

    scorer = Scorer(model, threads=1, batch_size=256)
    scores, symbols = [], []
    for name in records:
        rec = read_record(data / name)
        beats = read_beats(data / name)
        s = beat_scores(scorer.score_record(rec).point_score, beats.samples, rec.fs)
        ok = np.isfinite(s)
        scores.append(s[ok])
        symbols.append(beats.symbols[ok])
    return np.concatenate(scores), np.concatenate(symbols)


def figures(s: np.ndarray, sym: np.ndarray) -> dict:
    from ecgstream.evaluation.metrics import auroc
    from ecgstream.signals.labels import AAMI_ABNORMAL, AAMI_NORMAL

    normal = np.isin(sym, sorted(AAMI_NORMAL))
    abnormal = np.isin(sym, sorted(AAMI_ABNORMAL))
    keep = normal | abnormal
    out = {"beat": auroc(abnormal[keep].astype(int), s[keep]), "n": int(keep.sum())}
    for cls, members in CLASSES.items():
        sel = np.isin(sym, list(members))
        if sel.sum() and normal.sum():
            labels = np.r_[np.zeros(normal.sum()), np.ones(sel.sum())]
            out[cls] = auroc(labels, np.r_[s[normal], s[sel]])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=MITDB)
    ap.add_argument("--kinds", default="pbas,uniad,onenip")
    ap.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument(
        "--protocol",
        action="store_true",
        help="the protocol's 5 folds (MITDB_CV_FOLDS: fold k scored, fold k+1 calibrates, "
        "9 records train) instead of this study's 3 folds (--folds 0-4)",
    )
    ap.add_argument("--set", nargs="*", default=[], help="ImageConfig overrides, key=value")
    ap.add_argument("--window-s", type=float, default=4.0)
    ap.add_argument("--hop-s", type=float, default=2.0)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps-per-epoch", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-windows", type=int, default=6000, help="training windows per fold")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    from ecgstream.evaluation.splits import MITDB_DEV, MITDB_TEST, mitdb_cv_folds
    from ecgstream.runtime.model_file import ModelSpec
    from ecgstream.training.config import TrainConfig
    from ecgstream.training.image import export_detector, fit_records
    from ecgstream.training.trainer import prepare_data

    torch.set_num_threads(1)
    overrides = {"max_windows": args.max_windows, **parse_set(args.set)}
    kinds = [k for k in args.kinds.split(",") if k]
    collected: dict = {}
    t0 = time.perf_counter()
    if args.protocol:
        splits = [(list(c.held_out), list(c.train + c.val), list(c.val)) for c in mitdb_cv_folds()]
    else:
        splits = [
            (
                list(h),
                [r for r in MITDB_DEV if r not in h],
                [r for r in MITDB_DEV if r not in h][:2],
            )
            for h in FOLDS
        ]
    with tempfile.TemporaryDirectory() as tmp:
        for f in args.folds:
            held, train, val = splits[f]
            assert not (set(train) | set(held)) & set(MITDB_TEST) and not set(train) & set(held)
            spec, base, data = None, None, None
            for kind in kinds:
                cfg = TrainConfig(
                    model=kind, name=f"{kind}-cv{f}", leads=["MLII"], records=train,
                    val_records=val, fs=100.0, window_s=args.window_s, hop_s=args.hop_s,
                    epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                    seed=0, threads=1, model_out=Path(tmp) / f"{kind}-{f}.onnx",
                )  # fmt: skip
                t = time.perf_counter()
                if data is None:
                    data = prepare_data(cfg, [args.data])
                res = fit_records(
                    kind, cfg, [args.data], False, overrides=overrides, data=data, base=base
                )
                spec, base = res.spec, res.model  # the next heads reuse this fold's encoder
                print(f"fold {f} {kind}: trained {time.perf_counter() - t:.0f} s", flush=True)
                # (the relative point score and spectrogram plane this study compared were
                # removed from the product after it: docs/research/image-studies.md)
                variants = [(kind, res.model_path)]
                if res.model.self_ref is not None:
                    parts = [(f"{kind} head term", HeadOnly(res.model))]
                    if kind == kinds[0]:  # the same front end for every head of the fold
                        parts.append(("self-reference term", SelfRefOnly(res.model)))
                    for name, module in parts:
                        path = Path(tmp) / f"{name.replace(' ', '-')}-{f}.onnx"
                        variants.append((name, export_detector(module.eval(), res.spec, path)))
                for name, path in variants:
                    s, sym = beat_table(path, held, args.data)
                    c = collected.setdefault(name, {"scores": [], "symbols": [], "folds": []})
                    c["scores"].append(s)
                    c["symbols"].append(sym)
                    c["folds"].append(figures(s, sym))
                    print(f"  {name} fold {f}: {c['folds'][-1]}", flush=True)
            energy = Path(tmp) / f"energy-{f}.onnx"
            espec = ModelSpec.from_json(spec.to_json())
            espec.name, espec.params = "segment-energy", {"width": 16}
            export_detector(EnergyDetector(espec.window), espec, energy)
            s, sym = beat_table(energy, held, args.data)
            collected.setdefault("energy", {"scores": [], "symbols": [], "folds": []})
            collected["energy"]["scores"].append(s)
            collected["energy"]["symbols"].append(sym)
            collected["energy"]["folds"].append(figures(s, sym))
            print(f"  energy fold {f}: {collected['energy']['folds'][-1]}", flush=True)
    report = {
        "folds": [splits[f][0] for f in args.folds],
        "protocol": "MITDB_CV_FOLDS" if args.protocol else "3 folds of 5 (refiner_cv)",
        "overrides": overrides,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "seconds": round(time.perf_counter() - t0),
        "models": {},
    }
    for name, c in collected.items():
        pooled = figures(np.concatenate(c["scores"]), np.concatenate(c["symbols"]))
        per_fold = [x["beat"] for x in c["folds"]]
        report["models"][name] = {
            "pooled": pooled,
            "fold_beat_mean": float(np.mean(per_fold)),
            "fold_beat_min": float(np.min(per_fold)),
            "fold_beat_max": float(np.max(per_fold)),
            "folds": c["folds"],
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for name, m in report["models"].items():
        p = m["pooled"]
        print(
            f"{name:8s} beat {p['beat']:.3f} (folds {m['fold_beat_min']:.3f}-"
            f"{m['fold_beat_max']:.3f})  S {p.get('S', float('nan')):.3f}  "
            f"V {p.get('V', float('nan')):.3f}  F {p.get('F', float('nan')):.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
