"""Consensus point score + w x MMAE-ECG point score, measured out of fold over MIT-BIH DS1 DEV.

The 3 folds of ``cv.py`` (``DEV[i::3]``). Each fold's 5 records are scored by a consensus
detector (``models/consensus-mitdb-mlii.toml``) and an MMAE-ECG (``models/mmae-mitdb-mlii.toml``,
the fold files ``cv.py`` writes to its ``--work`` folder), both trained on the other 10 records
with the same 3 held out for validation and calibration, through the runtime Scorer (calibrated
units). A beat's score is the max point score within +-150 ms, the combination's point score is
``consensus + w * mmae``. ``w`` is chosen per fold from ``--weights`` by the pooled beat AUROC
(all abnormal vs N) of the *other* folds' records, then applied to the fold: every figure is out
of fold. As a control, the same with the 0.4 s segment-energy score (``benchmarks/eval_cv.py``'s
reference, calibrated on the fold's training records) in place of MMAE-ECG: does MMAE-ECG add
more than the energy does? Research only: nothing is shipped from it. Never reads the TEST
records.

    PYTHONPATH=. nice -n 10 python research/mmae/cv.py --work /tmp/mmae_cv_v4 --batch 64 \
        --out research/mmae/results/cv_v4.json
    PYTHONPATH=. nice -n 10 python research/mmae/combine.py --mmae-work /tmp/mmae_cv_v4 \
        --out research/mmae/results/combine.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ecgstream.evaluation.baselines import fit_energy_on_records
from ecgstream.evaluation.crossval import class_aurocs
from ecgstream.evaluation.metrics import auroc, beat_scores
from ecgstream.runtime.model_file import read_spec
from ecgstream.signals.labels import AAMI_ABNORMAL, AAMI_NORMAL, read_beats
from ecgstream.signals.records import read_record
from ecgstream.training import fit_records
from ecgstream.training.config import load_train_config
from research.mmae.data import DATA, DEV, TEST

REPO = Path(__file__).resolve().parents[2]


def beat_table(model: Path, records: list[str], batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Beat symbols and beat scores (max point score within +-150 ms, calibrated units) of
    ``records`` scored by ``model`` through the runtime Scorer; NaN where no window covered."""
    from ecgstream.runtime.scorer import Scorer

    scorer = Scorer(model, batch_size=batch)
    symbols, scores = [], []
    for name in records:
        rec = read_record(DATA / name)
        beats = read_beats(DATA / name)
        scores.append(beat_scores(scorer.score_record(rec).point_score, beats.samples, rec.fs))
        symbols.append(beats.symbols)
    return np.concatenate(symbols), np.concatenate(scores)


def figures(symbols: np.ndarray, scores: np.ndarray) -> dict:
    """Per-class beat AUROC (S, V, F vs N) and ``all`` (every abnormal beat vs N)."""
    out = {c: b["auroc"] for c, b in class_aurocs(symbols, scores).items()}
    keep = np.isin(symbols, sorted(AAMI_ABNORMAL)) | np.isin(symbols, sorted(AAMI_NORMAL))
    out["all"] = auroc(np.isin(symbols[keep], sorted(AAMI_ABNORMAL)).astype(int), scores[keep])
    return {k: None if v is None else round(float(v), 4) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mmae-work", type=Path, default=Path("/tmp/mmae_cv_v4"),
                    help="folder with cv.py's fold files mmae-cv{0,1,2}.onnx")  # fmt: skip
    ap.add_argument("--work", type=Path, default=Path("/tmp/mmae_combine"))
    ap.add_argument("--weights", type=float, nargs="*",
                    default=[0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0])  # fmt: skip
    ap.add_argument("--out", type=Path, default=REPO / "research/mmae/results/combine.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dev = sorted(DEV)
    folds = []
    for k in range(3):
        test = dev[k::3]
        train = [r for r in dev if r not in test]
        val = train[k::4][:3]  # as cv.py
        assert not set(test + train) & set(TEST)
        consensus = args.work / f"consensus-cv{k}.onnx"
        if not consensus.exists():
            cfg = load_train_config(REPO / "models/consensus-mitdb-mlii.toml",
                                    {"records": train, "val_records": val,
                                     "name": f"consensus-cv{k}"}, environ={})  # fmt: skip
            fit_records([DATA], cfg, consensus)
        mmae = args.mmae_work / f"mmae-cv{k}.onnx"
        energy = args.work / f"energy-cv{k}.onnx"  # as benchmarks/eval_cv.py's reference
        if not energy.exists():
            fit_energy_on_records([DATA / r for r in train if r not in val], read_spec(mmae),
                                  energy)  # fmt: skip
        sym, c = beat_table(consensus, test)
        fold = {"test": test, "train": train, "val": val, "consensus": c}
        for name, path in (("mmae", mmae), ("energy", energy)):
            sym_x, fold[name] = beat_table(path, test)
            assert (sym == sym_x).all()
        ok = np.isfinite(c) & np.isfinite(fold["mmae"]) & np.isfinite(fold["energy"])
        fold["symbols"] = sym[ok]
        for name in ("consensus", "mmae", "energy"):
            fold[name] = fold[name][ok]
        folds.append(fold)
        print(f"fold {k} scored: {test}", flush=True)
    results: dict = {"weights": args.weights, "folds": {}}
    names = ("consensus", "mmae", "energy", "consensus+mmae", "consensus+energy")
    pooled: dict[str, list] = {name: [] for name in ("symbols", *names)}
    for k, f in enumerate(folds):
        others = [g for j, g in enumerate(folds) if j != k]
        sym_o = np.concatenate([g["symbols"] for g in others])
        c_o = np.concatenate([g["consensus"] for g in others])
        entry = {"test": f["test"], "train": f["train"], "val": f["val"],
                 "beats": int(len(f["symbols"]))}  # fmt: skip
        for add in ("mmae", "energy"):
            a_o = np.concatenate([g[add] for g in others])
            choice = {w: figures(sym_o, c_o + w * a_o)["all"] for w in args.weights}
            w = max(args.weights, key=lambda v: (choice[v], -v))  # ties: the smaller weight
            f[f"consensus+{add}"] = f["consensus"] + w * f[add]
            entry[f"w_{add}"] = w
            entry[f"w_{add}_choice_other_folds"] = choice
        for name in names:
            entry[name] = figures(f["symbols"], f[name])
        results["folds"][str(k)] = entry
        for key in ("symbols", *names):
            pooled[key].append(f[key])
        print(json.dumps(entry), flush=True)
    sym = np.concatenate(pooled["symbols"])
    summary = {}
    for name in names:
        per_fold = [results["folds"][str(k)][name] for k in range(3)]
        summary[name] = {
            c: {"mean": round(float(np.mean([p[c] for p in per_fold if p[c] is not None])), 4),
                "min": min(p[c] for p in per_fold if p[c] is not None),
                "max": max(p[c] for p in per_fold if p[c] is not None)}
            for c in ("S", "V", "F", "all")
        }  # fmt: skip
        summary[name]["pooled"] = figures(sym, np.concatenate(pooled[name]))
    results["summary"] = summary
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
