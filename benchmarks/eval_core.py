"""The core figures of MMAE-ECG, on TEST data only, with a PCA reference in the same run.

1. MIT-BIH DS1 (lead MLII): an MMAE-ECG is trained on the DEV records (the trainer holds some of
   them out for validation, early stopping and calibration); a PCA reconstruction model is fitted
   on the normal windows of the same training records, cut the same way. Both are evaluated on
   the TEST records (101 106 119 201 209 215 223): beat-level AUROC / AP, 10 s window AUROC, and
   point-level localisation AUROC on Perlin-noise anomalies injected into excerpts of the TEST
   records.
2. PTB-XL dev (12 leads, 100 Hz): MMAE-ECG trained on NORM-only ECGs of folds 1-5 (fold 6
   validates); PCA fitted on the same training ECGs; record AUROC on folds 7-8.

The splits come from :mod:`ecgstream.evaluation.splits`; the script refuses a model whose
training summary names a TEST record. Results go to a JSON file (and ROC / example plots beside
it; the trained models go to ``runs/eval_core/``); the markdown table printed at the end is the one
in docs/benchmarks.md.

    nice -n 5 python benchmarks/eval_core.py --out benchmarks/results/eval_core.json

Reuse already trained DEV models with ``--mitdb-model`` / ``--ptbxl-model``; ``--quick`` trains
for a few steps only (a smoke run, not a figure).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
MITDB = Path("/work/shared/data/mitdb-ds1")
PTBXL = Path("/work/shared/data/ptbxl-dev")
PTBXL_LEADS = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def train_config(toml: Path | None, quick: bool, **flags):
    """A :class:`TrainConfig` from defaults < TOML ``[train]`` and ``[model]`` < ``flags``."""
    from ecgstream.training.config import load_train_config

    if quick:
        flags.update(epochs=2, steps_per_epoch=10, patience=2)
    return load_train_config(toml, flags, environ={})


def default_config(name: str) -> Path | None:
    """``models/<name>.toml`` when the shipped model's configuration is there, else None."""
    path = REPO / "models" / f"{name}.toml"
    return path if path.exists() else None


def train(paths: list[Path], cfg, out: Path) -> tuple[Path, float]:
    """Train through the public training API; returns the ONNX path and the wall time (s)."""
    from ecgstream.training import fit_records

    t0 = time.perf_counter()
    path = fit_records(paths, cfg, out, progress=True)
    return path, time.perf_counter() - t0


def check_unseen(model: Path, test_names: set[str]) -> dict:
    """The model's training summary; exits if it was trained or validated on a TEST record."""
    from ecgstream.evaluation.crossval import LeakError
    from ecgstream.evaluation.crossval import check_unseen as unseen
    from ecgstream.runtime.model_file import read_spec

    try:
        summary = unseen(model, test_names)
    except LeakError as exc:
        raise SystemExit(
            f"evaluation on TEST records refused (figures would be inflated): {exc}"
        ) from exc
    spec = read_spec(model)
    return {
        **summary,
        "window": spec.window,
        "hop": spec.hop,
        "fs": spec.fs,
        "parameters": spec.params.get("parameters"),
        "macs_per_window": spec.params.get("macs_per_window"),
    }


class Trained(NamedTuple):
    """The model a run evaluates, its training wall time (s, None if reused) and its config."""

    model: Path
    seconds: float | None
    config: dict


def train_or_reuse(
    reused: Path | None, toml: Path | None, quick: bool, paths: list[Path], out: Path, **flags
) -> Trained:
    """``reused`` as it is, else a model trained on ``paths`` (TOML ``[train]`` < ``flags``) to ``out``."""
    if reused is not None:
        return Trained(reused, None, {"reused_model": str(reused)})
    cfg = train_config(toml, quick, **flags)
    config = {"toml": str(toml) if toml else None, **cfg.to_dict()}
    model, seconds = train(paths, cfg, out)
    return Trained(model, seconds, config)


def evaluate_with_pca(
    args,
    out_dir: Path,
    name: str,
    trained: list[Trained],
    summary: dict,
    train_paths: list[Path],
    test: list[Path],
    **evaluate_kw,
) -> dict:
    """Evaluate the trained models and a PCA reference fitted on ``train_paths`` on ``test``.

    ``name`` (``mitdb``, ``ptbxl``) names the PCA model in ``--work-dir`` and the plot folder in
    ``out_dir``; ``summary`` (from :func:`check_unseen`) goes into the report's ``training``.
    """
    from ecgstream.cli.evaluate import write_plots
    from ecgstream.evaluation.baselines import fit_pca_on_records
    from ecgstream.evaluation.protocol import ModelSource, evaluate
    from ecgstream.runtime.model_file import read_spec

    pca = fit_pca_on_records(
        train_paths,
        read_spec(trained[0].model),
        args.work_dir / f"pca-{name}-dev.onnx",
        n_components=args.pca_components,
    )
    sources = [ModelSource(t.model) for t in trained] + [ModelSource(pca)]
    report, collected, example = evaluate(sources, test, **evaluate_kw)
    plot_dir = out_dir / name
    plot_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = [
        str(plot_dir / p) for p in write_plots(plot_dir, collected, example, sources, report)
    ]
    report["training"] = {
        **summary,
        "wall_seconds": {str(t.model): t.seconds for t in trained},
        "models": [str(t.model) for t in trained],
        "pca_model": str(pca),
        "config": {str(t.model): t.config for t in trained},
    }
    return report


def _train_all(reused: list[Path], tomls: list[Path], args, paths, prefix: str, **flags):
    """The models a run compares: ``reused`` files as they are, else one per TOML trained on ``paths``."""
    if reused:
        return [train_or_reuse(m, None, args.quick, paths, Path()) for m in reused]
    out = []
    for toml in tomls:
        kind = train_config(toml, args.quick).model
        name = f"{kind}-{prefix}-dev"
        out.append(train_or_reuse(None, toml, args.quick, paths, args.work_dir / f"{name}.onnx",
                                  name=name, **flags))  # fmt: skip
    return out


def run_mitdb(args, out_dir: Path) -> dict:
    from ecgstream.evaluation.splits import MITDB_DEV, MITDB_LEAD, MITDB_TEST, mitdb_paths

    dev = mitdb_paths(args.mitdb, MITDB_DEV)
    test = mitdb_paths(args.mitdb, MITDB_TEST)
    tomls = args.mitdb_config or [
        default_config("consensus-mitdb-mlii"),
        default_config("mmae-mitdb-mlii"),
    ]
    trained = _train_all(args.mitdb_model, [t for t in tomls if t], args, dev, "mitdb",
                         leads=[MITDB_LEAD], seed=args.seed, records=[])  # fmt: skip
    summaries = [check_unseen(t.model, set(MITDB_TEST)) for t in trained]
    train_paths = mitdb_paths(args.mitdb, summaries[0]["records"])
    return evaluate_with_pca(
        args,
        out_dir,
        "mitdb",
        trained,
        {str(t.model): s for t, s in zip(trained, summaries, strict=True)},
        train_paths,
        test,
        localisation=args.localisation,
        excerpt_s=args.excerpt_s,
        seed=args.seed,
    )


def run_ptbxl(args, out_dir: Path) -> dict:
    from ecgstream.evaluation.splits import ptbxl_split

    test_table = ptbxl_split(args.ptbxl, "test")
    train_table = ptbxl_split(args.ptbxl, "train")
    test = [Path(p) for p in test_table["path"]]
    # the PTB-XL model's own TOML when there is one, else the MIT-BIH model's architecture and
    # optimisation settings; PTB-XL's folds give the validation split
    tomls = args.ptbxl_config or [
        default_config("consensus-ptbxl"),
        default_config("mmae-ptbxl") or default_config("mmae-mitdb-mlii"),
    ]
    trained = _train_all(args.ptbxl_model, [t for t in tomls if t], args, [args.ptbxl], "ptbxl",
                         leads=PTBXL_LEADS, seed=args.seed, val_records=[], records=[])  # fmt: skip
    test_names = {Path(p).name for p in test}
    summaries = [check_unseen(t.model, test_names) for t in trained]
    trained_names = set(summaries[0]["records"])
    train_paths = [Path(p) for p in train_table["path"] if Path(p).name in trained_names]
    report = evaluate_with_pca(args, out_dir, "ptbxl", trained,
                               {str(t.model): s for t, s in zip(trained, summaries, strict=True)},
                               train_paths, test)  # fmt: skip
    for entry in report["sources"].values():
        entry.pop("per_record", None)  # 88 one-window records: the pooled figures say it all
    return report


def _f(block: dict | None, key: str = "auroc") -> str:
    return "-" if not block or block.get(key) is None else f"{block[key]:.3f}"


def markdown(results: dict) -> str:
    """The results table of docs/benchmarks.md."""
    names = next(list(results[k]["sources"]) for k in ("mitdb", "ptbxl") if k in results)
    rows = [
        "| data (TEST only) | metric | "
        + " | ".join(n.split("-")[0] for n in names[:-1])
        + " | PCA reference | n (positives) |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    for key, label in (("mitdb", "MIT-BIH DS1 TEST records"), ("ptbxl", "PTB-XL folds 7-8")):
        if key not in results:
            continue
        srcs = list(results[key]["sources"].values())
        model, others = srcs[0], srcs[1:]
        for block, metric in (
            ("beat", "beat AUROC (+-150 ms)"),
            ("beat", "beat AP"),
            ("window_10s", "10 s window AUROC"),
            ("record", "record AUROC (max window score)"),
            ("localisation", "localisation point AUROC (Perlin anomalies)"),
        ):
            if block not in model:
                continue
            k = "ap" if metric.endswith("AP") else "auroc"
            n = f"{model[block]['n']} ({model[block]['n_positive']})"
            if k == "ap":
                n += f", chance AP {model[block]['ap_chance']:.3f}"
            cells = " | ".join(_f(src.get(block), k) for src in [model, *others])
            if model[block].get("auroc_interval_95"):
                low, high = model[block]["auroc_interval_95"]
                cells = cells.replace(" |", f" (95 % interval {low:.3f}-{high:.3f}) |", 1)
            rows.append(f"| {label} | {metric} | {cells} | {n} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mitdb", type=Path, default=MITDB)
    ap.add_argument("--ptbxl", type=Path, default=PTBXL)
    ap.add_argument(
        "--mitdb-config",
        type=Path,
        action="append",
        help="TOML with a [train] section for an MIT-BIH model (repeatable; default: the "
        "consensus and MMAE-ECG configs in models/)",
    )
    ap.add_argument(
        "--ptbxl-config",
        type=Path,
        action="append",
        help="TOML with a [train] section for a PTB-XL model (repeatable)",
    )
    ap.add_argument(
        "--mitdb-model",
        type=Path,
        action="append",
        default=[],
        help="reuse an ONNX model trained on MIT-BIH DEV records (repeatable)",
    )
    ap.add_argument(
        "--ptbxl-model",
        type=Path,
        action="append",
        default=[],
        help="reuse an ONNX model trained on PTB-XL folds 1-6 (repeatable)",
    )
    ap.add_argument("--skip", choices=["mitdb", "ptbxl"], action="append", default=[])
    ap.add_argument(
        "--localisation", type=int, default=10, help="synthetic anomalies per TEST record"
    )
    ap.add_argument("--excerpt-s", type=float, default=60.0)
    ap.add_argument("--pca-components", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--work-dir", type=Path, default=REPO / "runs" / "eval_core", help="where trained models go"
    )
    ap.add_argument("--quick", action="store_true", help="a few training steps only (smoke run)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "eval_core.json")
    args = ap.parse_args()
    out_dir = args.out.with_suffix("")  # plots
    out_dir.mkdir(parents=True, exist_ok=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)  # trained models (not results)
    results: dict = {"command": " ".join(["python", *sys.argv]), "quick": args.quick}
    t0 = time.perf_counter()
    if "mitdb" not in args.skip:
        results["mitdb"] = run_mitdb(args, out_dir)
        args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    if "ptbxl" not in args.skip:
        results["ptbxl"] = run_ptbxl(args, out_dir)
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    results["table"] = markdown(results)
    args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(results["table"])
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
