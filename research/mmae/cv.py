"""MMAE-ECG beat AUROC by leave-records-out cross-validation over MIT-BIH DS1 DEV.

The 15 DEV records are split into 3 folds (``DEV[i::3]``); each fold's records are scored by a
model trained on the other 10 (3 of which it holds out for early stopping and calibration), with
the shipped configuration (``models/mmae-mitdb-mlii.toml``). In the same run and on the same
records: the segment-energy score (the same network with zero output heads: the score of a
sample is its own squared centred amplitude) and the PCA reference fitted on the fold's training
records. Per-class AUROC (S, V, F against N) and all-abnormal AUROC per fold, then mean and spread.
Never reads the TEST records.

    PYTHONPATH=. nice -n 10 python research/mmae/cv.py --out research/mmae/results/cv.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from beat_classes import class_aurocs  # noqa: E402

from ecgstream.evaluation.baselines import fit_pca_on_records  # noqa: E402
from ecgstream.runtime.model_file import read_spec  # noqa: E402
from ecgstream.training import fit_records  # noqa: E402
from ecgstream.training.config import load_train_config  # noqa: E402
from research.mmae.data import DATA, DEV, TEST, fold_summary  # noqa: E402


def energy_model(spec_model: Path, out: Path, copy: bool = False) -> Path:
    """The segment-energy score: ``spec_model``'s network with zeroed output heads and no rhythm
    prompt, exported. ``copy``: keep the prompt, so the prediction is the aligned copy of the
    visible beats one and two periods away (the prompted model before training)."""
    import torch

    from ecgstream.models.mmae import MMAE, MMAEConfig
    from ecgstream.training.export import export_onnx

    spec = read_spec(spec_model)
    cfg = MMAEConfig.from_dict(spec.params)
    if not copy:
        cfg.prompt_periods = 0
    model = MMAE(cfg)
    with torch.no_grad():
        for head in (model.head_global, model.head_local):
            head.weight.zero_()
            head.bias.zero_()
    spec.name = "beat-copy" if copy else "segment-energy"
    return export_onnx(model, spec, out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mmae_cv"))
    ap.add_argument("--out", type=Path, default=REPO / "research/mmae/results/cv.json")
    ap.add_argument("--batch", type=int, default=16, help="scoring batch (windows); the prompt's "
                    "memory grows with it")  # fmt: skip
    ap.add_argument("--score-only", action="store_true", help="reuse the fold files in --work")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    dev = sorted(DEV)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"folds": {}}
    for k in args.folds:
        test = dev[k::3]
        train = [r for r in dev if r not in test]
        assert not set(test + train) & set(TEST)
        val = train[k::4][:3]
        cfg = load_train_config(REPO / "models/mmae-mitdb-mlii.toml",  # [train] and [model]
                                {"records": train, "val_records": val, "name": f"mmae-cv{k}"},
                                environ={})  # fmt: skip
        t0 = time.perf_counter()
        model = args.work / f"mmae-cv{k}.onnx"
        if not args.score_only:
            model = fit_records([DATA], cfg, model)
        seconds = time.perf_counter() - t0
        energy = energy_model(model, args.work / f"energy-cv{k}.onnx")
        pca = args.work / f"pca-cv{k}.onnx"
        if not args.score_only:
            pca = fit_pca_on_records([DATA / r for r in train if r not in val], read_spec(model),
                                     pca)  # fmt: skip
        fold = {"test": test, "train": train, "val": val, "train_seconds": round(seconds, 1)}
        scored = [("mmae", model), ("energy", energy), ("pca", pca)]
        if cfg.model_config().prompt_periods:
            scored.append(("copy", energy_model(model, args.work / f"copy-cv{k}.onnx", copy=True)))
        for name, path in scored:
            fold[name] = {c: {"beats": n, "auroc": round(a, 4)}
                          for c, (n, a) in class_aurocs(path, DATA, test, args.batch).items()}  # fmt: skip
        results["folds"][str(k)] = fold
        print(json.dumps(fold), flush=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    summary = fold_summary(results["folds"], ("mmae", "energy", "pca", "copy"))
    results["summary"] = summary
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
