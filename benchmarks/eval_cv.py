"""Cross-validated figures of a model configuration: the protocol model choices are made by.

DS1 (MIT-BIH, lead of the TOML, default models/consensus-mitdb-mlii.toml): leave-records-out
cross-validation over the 15 DEV records in 5 fixed folds of 3 records
(ecgstream/evaluation/splits.py, MITDB_CV_FOLDS). For each fold the model is trained from the
TOML's [train] table through ecgstream.training.fit_records on the other 12 records (the next
fold's 3 validate, 9 train; the TOML's records / val_records are replaced), and
the fold's 3 records are scored through the runtime Scorer, as `ecgstream score` scores them.

PTB-XL (default models/consensus-ptbxl.toml): the same over strat_fold 1-8 of ptbxl-dev
(folds respect patients): fold k scored, fold k+1 validates, NORM-only ECGs of the rest train.

In the same run, for every fold: a PCA reconstruction reference and the segment-energy score
(the trivial predictor), fitted / calibrated on the fold's training records.

Figures (per fold; mean, std, min, max across folds; pooled over all out-of-fold scores):
  beat      beat AUROC, AAMI abnormal (S V F Q) vs normal (N L R e j); beat score = max point
            score within +-150 ms of the annotation
  beat_ap   beat average precision
  S, V, F   beat AUROC of supraventricular (A a J S), ventricular (V E), fusion (F) beats,
            each against the normal beats
  window    10 s windows (max point score), any abnormal beat vs only normal beats
  record    PTB-XL record AUROC (max window score), NORM-only vs any other superclass

The DS1 TEST records (101 106 119 201 209 215 223) are never read by the cross-validation.
--test MODEL.onnx scores one finished model file once on them, with the same figures, and
refuses a model whose training summary names a TEST record.

examples:
  nice -n 10 python benchmarks/eval_cv.py --skip ptbxl --out benchmarks/results/eval_cv_mitdb.json
  nice -n 10 python benchmarks/eval_cv.py --skip mitdb --out benchmarks/results/eval_cv_ptbxl.json
  python benchmarks/eval_cv.py --mitdb-config my.toml --set seed=1 --skip ptbxl --out /tmp/cv.json
  python benchmarks/eval_cv.py --test models/consensus-mitdb-mlii.onnx --out /tmp/test.json

Trained fold models go to --work-dir (reused when their configuration is unchanged; --retrain
trains again). The markdown table printed at the end is the one in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MITDB = REPO.parent / "shared" / "data" / "mitdb-ds1"
PTBXL = REPO.parent / "shared" / "data" / "ptbxl-dev"
LABELS = {"model": None, "pca": "PCA reference", "energy": "segment energy"}
COLUMNS = (("beat", "pooled beat"), ("beat_ap", "beat AP"), ("S", "S vs N"), ("V", "V vs N"),
           ("F", "F vs N"), ("window_10s", "10 s window"))  # fmt: skip


def _cell(stats: dict | None) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    return (f"{stats['mean']:.3f} ± {stats['std']:.3f} ({stats['min']:.3f}-{stats['max']:.3f}); "
            f"pooled {stats['pooled']:.3f}")  # fmt: skip


def markdown(results: dict) -> str:
    """Tables of mean ± std (min-max across folds; pooled out-of-fold) per model and data set."""
    rows: list[str] = []
    for key, columns in (("mitdb", COLUMNS), ("ptbxl", (("record", "record AUROC"),))):
        if key not in results:
            continue
        res = results[key]
        rows += [f"| {key} ({len(res['folds'])} folds) | "
                 + " | ".join(c for _, c in columns) + " |",
                 "|---|" + "---|" * len(columns)]  # fmt: skip
        for role, summary in res["summary"].items():
            label = LABELS.get(role) or Path(res["toml"] or "model").stem
            rows.append(
                f"| {label} | " + " | ".join(_cell(summary.get(m)) for m, _ in columns) + " |"
            )
        rows.append("")
    if "test" in results:
        figs = results["test"]["figures"]
        rows += ["| DS1 TEST (once) | " + " | ".join(c for _, c in COLUMNS) + " |",
                 "|---|" + "---|" * len(COLUMNS)]  # fmt: skip
        for role, f in figs.items():
            label = LABELS.get(role) or Path(results["test"]["model"]).stem
            cells = []
            for m, _ in COLUMNS:
                block = f.get(m) or {}
                value = block.get("ap") if m == "beat_ap" else block.get("auroc")
                cells.append("-" if value is None else f"{value:.3f} (n {block['n']})")
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _flags(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs of ``--set`` (the loader converts the strings to the field's type)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip().replace("-", "_")] = value
    return out


def _progress(name: str, results: dict, save: Callable[[], None]) -> Callable[[dict], None]:
    """Print each finished fold and keep it in the results file (``<name>_partial``) until the
    data set's cross-validation is complete, so a long run that stops leaves its folds."""

    def show(entry: dict) -> None:
        parts = []
        for role, f in entry["figures"].items():
            vals = {m: (f.get(m) or {}).get("auroc") for m in ("beat", "S", "V", "F", "record")}
            parts.append(role + " " + " ".join(f"{m} {v:.3f}" for m, v in vals.items()
                                               if v is not None))  # fmt: skip
        print(f"{name} fold {entry['index']} {entry['held_out']} ({entry['wall_seconds']:.0f} s): "
              + "; ".join(parts), flush=True)  # fmt: skip
        results.setdefault(f"{name}_partial", []).append(entry)
        save()

    return show


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mitdb", type=Path, default=MITDB, help="MIT-BIH DS1 folder")
    ap.add_argument("--ptbxl", type=Path, default=PTBXL, help="PTB-XL dev folder")
    ap.add_argument("--mitdb-config", type=Path, default=REPO / "models" / "consensus-mitdb-mlii.toml",
                    help="TOML with the [train] table of the MIT-BIH model")  # fmt: skip
    ap.add_argument("--ptbxl-config", type=Path, default=REPO / "models" / "consensus-ptbxl.toml",
                    help="TOML with the [train] table of the PTB-XL model")  # fmt: skip
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a [train] key in every fold (not records / val_records)")  # fmt: skip
    ap.add_argument("--skip", choices=["mitdb", "ptbxl"], action="append", default=[])
    ap.add_argument("--test", type=Path, metavar="MODEL",
                    help="score this finished model once on the DS1 TEST records instead")  # fmt: skip
    ap.add_argument("--pca-components", type=int, default=8)
    ap.add_argument("--work-dir", type=Path, default=REPO / "runs" / "eval_cv",
                    help="where fold models and references go")  # fmt: skip
    ap.add_argument("--retrain", action="store_true", help="do not reuse trained fold models")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "eval_cv.json")
    args = ap.parse_args()

    from ecgstream.evaluation.crossval import mitdb_cv, ptbxl_cv, report_on_test

    flags = _flags(args.set)
    results: dict = {"command": " ".join(["python", *sys.argv]), "set": flags}
    t0 = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        results["wall_seconds"] = round(time.perf_counter() - t0, 1)
        args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")

    if args.test:
        results["test"] = {"model": str(args.test),
                           **report_on_test(args.test, args.mitdb, args.work_dir / "test",
                                            pca_components=args.pca_components)}  # fmt: skip
    else:
        common = {"pca_components": args.pca_components, "reuse": not args.retrain,
                  "progress": True, **flags}  # fmt: skip
        if "mitdb" not in args.skip:
            results["mitdb"] = mitdb_cv(args.mitdb_config, args.mitdb, args.work_dir / "mitdb",
                                        on_fold=_progress("mitdb", results, save), **common)  # fmt: skip
            results.pop("mitdb_partial", None)
            save()
        if "ptbxl" not in args.skip:
            results["ptbxl"] = ptbxl_cv(args.ptbxl_config, args.ptbxl, args.work_dir / "ptbxl",
                                        on_fold=_progress("ptbxl", results, save), **common)  # fmt: skip
            results.pop("ptbxl_partial", None)
    results["table"] = markdown(results)
    save()
    print(results["table"])
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    from ecgstream.evaluation.crossval import LeakError

    try:
        sys.exit(main())
    except LeakError as exc:
        sys.exit(f"eval_cv.py: refused: {exc}")
