"""DEV figures of the score refiner by 3-fold cross-validation over the 15 MIT-BIH DEV records.

The refiner learns from synthetic anomalies injected into its training records, so the DEV
records it learned from cannot judge it. Each fold trains it on 10 DEV records (its
configuration's ``val_records`` are the other 5) and scores the 5 it never read. The figures
are pooled over the three folds, side by side with the same detector without a refiner (which
learns nothing, so one export serves every fold). TEST records are never read.

- pooled beat AUROC (±150 ms), 10 s window AUROC;
- localisation AUROC for two draws of synthetic anomalies (20 excerpts of 60 s per record,
  seeds 1 and 2), and per kind for the first.

About 2 minutes per fold and variant; ``--folds 0`` runs the first fold only, for a first look.

    python research/refiner_cv.py --variant refiner refiner_channels=16 \\
        --out research/results/refiner_cv.json
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from dev_variants import (  # research/ is on sys.path when run as a script
    KINDS,
    export_variant,
    parse_variants,
    variants_parser,
)

#: the validation records of the shipped configuration first, then the other 10 in two folds
FOLDS = (
    ("114", "118", "124", "205", "220"),
    ("108", "109", "112", "115", "116"),
    ("122", "203", "207", "208", "230"),
)


def pooled(parts: list):
    """One :class:`Collected` of several (the pairs of every fold)."""
    from ecgstream.evaluation.protocol import Collected

    out = Collected()
    for part in parts:
        for name in ("beat", "window", "point"):
            getattr(out, f"{name}_labels").extend(getattr(part, f"{name}_labels"))
            getattr(out, f"{name}_scores").extend(getattr(part, f"{name}_scores"))
        out.point_kinds.extend(part.point_kinds)
    return out


def main() -> None:
    from ecgstream.evaluation.protocol import ModelSource, evaluate, summarise
    from ecgstream.evaluation.splits import mitdb_paths

    p = variants_parser(__doc__)
    p.add_argument("--folds", nargs="+", type=int, default=list(range(len(FOLDS))),
                   help="which folds to run (0-2; default all), for a first look")  # fmt: skip
    args = p.parse_args()
    folds = [FOLDS[k] for k in args.folds]
    variants = [("no refiner", {"refiner_channels": "0"}), *parse_variants(p, args)]
    collected: dict[tuple[str, int], list] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = export_variant(args.config, variants[0][1], args.data, Path(tmp) / "base.onnx")
        for k, fold in enumerate(folds):
            sources = [ModelSource(base)]
            sources[0].name = variants[0][0]
            for i, (name, changes) in enumerate(variants[1:]):
                changes = {**changes, "val_records": ",".join(fold)}
                out = Path(tmp) / f"fold{k}-variant{i}.onnx"  # one file per model
                model = export_variant(args.config, changes, args.data, out)
                sources.append(ModelSource(model))
                sources[-1].name = name
            for seed in args.seeds:
                _, parts, _ = evaluate(sources, mitdb_paths(args.data, fold), localisation=20,
                                       seed=seed, progress=False)  # fmt: skip
                for name, part in parts.items():
                    collected.setdefault((name, seed), []).append(part)
            print(f"fold {' '.join(fold)} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\n| variant | beat | 10 s window | localisation, seeds | per kind "
          f"({' / '.join(KINDS)}) |\n|---|---|---|---|---|")  # fmt: skip
    results = []
    for name, changes in variants:
        reports = [summarise(pooled(collected[(name, seed)])) for seed in args.seeds]
        first = reports[0]
        kinds = {k: v["auroc"] for k, v in first["localisation"]["per_kind"].items()}
        row = {
            "name": name,
            "changes": changes,
            "beat": first["beat"]["auroc"],
            "window": first["window_10s"]["auroc"],
            "localisation": [r["localisation"]["auroc"] for r in reports],
            "localisation_interval_95": [r["localisation"]["auroc_interval_95"] for r in reports],
            "per_kind": kinds,
        }
        results.append(row)
        loc = " / ".join(f"{v:.4f}" for v in row["localisation"])
        per_kind = " ".join(f"{kinds.get(k, float('nan')):.3f}" for k in KINDS)
        print(f"| {name} | {row['beat']:.4f} | {row['window']:.3f} | {loc} | {per_kind} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"folds": folds, "seeds": args.seeds, "config": str(args.config),
                   "results": results}  # fmt: skip
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
