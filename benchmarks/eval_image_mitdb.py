"""Spectrogram image methods on MIT-BIH DS1 TEST records, beside MMAE-ECG, with cost per window.

Each image method (UniAD-, PBAS-, OneNIP-style on a log-spectrogram front end) is trained with
``ecgstream train --model KIND`` machinery on the DEV records only (validation records 114 118
124 205 220, also DEV, calibrate the scores), exported to ONNX, and evaluated by the project's
protocol (:func:`ecgstream.evaluation.protocol.evaluate`) on the TEST records 101 106 119 201 209
215 223: beat-level AUROC (max point score within +-150 ms of each beat; AAMI abnormal vs
normal), 10 s window AUROC, and point-level localisation AUROC on Perlin-noise anomalies injected
into excerpts of the TEST records. An MMAE-ECG trained on the same DEV records (``--mmae``, from
``benchmarks/eval_core.py``) is evaluated in the same run when given.

Cost: ONNX Runtime on one thread, ms per window at batch 1 and at batch 64 (median and best of
the repeats; on a shared machine the median includes waiting for the CPU), model file size,
parameter count. ``--cost-only`` re-measures the cost of existing models without evaluating.

    nice -n 5 python benchmarks/eval_image_mitdb.py --out benchmarks/results/image_mitdb.json \\
        --mmae benchmarks/results/eval_core/mmae-mitdb-dev.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

MITDB = Path("/work/shared/data/mitdb-ds1")
VAL = ["114", "118", "124", "205", "220"]


def window_cost(model_path: Path, repeats: int = 50) -> dict:
    """Median ONNX Runtime latency (one thread) per window at batch 1 and batch 64, and file size."""
    from ecgstream.runtime.scorer import Scorer

    scorer = Scorer(model_path, threads=1, batch_size=64)
    spec = scorer.spec
    rng = np.random.default_rng(0)
    one = rng.normal(size=(1, len(spec.leads), spec.window)).astype(np.float32)
    many = rng.normal(size=(64, len(spec.leads), spec.window)).astype(np.float32)
    scorer.score_windows(one)
    t1 = []
    for _ in range(repeats):
        t = time.perf_counter()
        scorer.score_windows(one)
        t1.append(time.perf_counter() - t)
    t64 = []
    for _ in range(max(3, repeats // 10)):
        t = time.perf_counter()
        scorer.score_windows(many)
        t64.append(time.perf_counter() - t)
    return {
        "ms_per_window_batch1": round(1000 * float(np.median(t1)), 3),
        "ms_per_window_batch64": round(1000 * float(np.median(t64)) / 64, 3),
        # best of the repeats: on a shared machine the median includes waiting for the CPU
        "best_ms_per_window_batch1": round(1000 * float(np.min(t1)), 3),
        "best_ms_per_window_batch64": round(1000 * float(np.min(t64)) / 64, 3),
        "model_bytes": model_path.stat().st_size,
        "parameters": spec.params.get("parameters"),
        "window": spec.window,
        "fs": spec.fs,
    }


def train_kind(kind: str, out: Path, args) -> Path:
    import dataclasses

    from ecgstream.evaluation.splits import MITDB_DEV
    from ecgstream.training.config import TrainConfig
    from ecgstream.training.registry import get_kind

    cfg = TrainConfig(
        model=kind,
        name=f"{kind}-mitdb-dev",
        leads=["MLII"],
        records=list(MITDB_DEV),
        val_records=VAL,
        fs=100.0,
        window_s=args.window_s,
        hop_s=args.hop_s,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=64,
        seed=0,
        threads=1,
        model_out=out,
    )
    cfg = dataclasses.replace(cfg, checkpoint_dir=None)
    t0 = time.perf_counter()
    result = get_kind(kind).fit(cfg, [args.data], progress=False)
    trained_on = set(result.spec.training["records"]) | set(result.spec.training["val_records"])
    from ecgstream.evaluation.splits import MITDB_TEST

    if trained_on & set(MITDB_TEST):
        raise SystemExit(f"{kind}: trained on TEST records {sorted(trained_on & set(MITDB_TEST))}")
    print(f"{kind}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return Path(result.model_path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=MITDB)
    ap.add_argument("--kinds", default="pbas,uniad,onenip")
    ap.add_argument("--mmae", type=Path, help="MMAE-ECG ONNX model trained on the DEV records")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/image_mitdb.json"))
    ap.add_argument("--models-dir", type=Path, default=Path("benchmarks/results/image_mitdb"))
    ap.add_argument("--window-s", type=float, default=4.0)
    ap.add_argument("--hop-s", type=float, default=2.0)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps-per-epoch", type=int, default=100)
    ap.add_argument("--localisation", type=int, default=10, help="Perlin excerpts per TEST record")
    ap.add_argument("--reuse", action="store_true", help="reuse models already in --models-dir")
    ap.add_argument(
        "--cost-only", nargs="*", type=Path, metavar="MODEL", help="only measure these models"
    )
    args = ap.parse_args(argv)
    if args.cost_only:
        for path in args.cost_only:
            print(path, json.dumps(window_cost(path, repeats=200)), flush=True)
        return 0

    import torch

    from ecgstream.evaluation.protocol import ModelSource, evaluate
    from ecgstream.evaluation.splits import MITDB_TEST, mitdb_paths

    torch.set_num_threads(1)
    args.models_dir.mkdir(parents=True, exist_ok=True)
    sources, costs = [], {}
    for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        path = args.models_dir / f"{kind}-mitdb-dev.onnx"
        if not (args.reuse and path.exists()):
            train_kind(kind, path, args)
        sources.append(_source(ModelSource, path, kind))
        costs[kind] = window_cost(path)
    if args.mmae is not None and args.mmae.exists():
        sources.append(_source(ModelSource, args.mmae, "mmae"))
        costs["mmae"] = window_cost(args.mmae)
    report, _, _ = evaluate(
        sources,
        mitdb_paths(args.data, MITDB_TEST),
        localisation=args.localisation,
        excerpt_s=60.0,
        seed=0,
        progress=False,
    )
    table = {}
    for name, entry in report["sources"].items():
        entry.pop("per_record", None)
        table[name] = {
            "figures": {k: v for k, v in entry.items() if k != "model"},
            "cost": costs.get(name),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"protocol": report["protocol"], "skipped": report["skipped"], "methods": table},
            indent=2,
        )
    )
    print(json.dumps(table, indent=2))
    return 0


def _source(cls, path: Path, name: str):
    source = cls(path, threads=1, batch_size=64)
    source.name = name
    return source


if __name__ == "__main__":
    sys.exit(main())
