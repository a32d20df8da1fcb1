"""DEV figures of consensus-detector variants, side by side with the shipped configuration.

This is how the choices in ``docs/model-consensus.md`` are made. Each variant is the shipped
configuration (``models/consensus-mitdb-mlii.toml``) with some keys changed. It is calibrated
and exported (a few seconds), then measured on the 15 MIT-BIH DEV records (TEST records are never
read):

- pooled beat AUROC (±150 ms) and per AAMI class (``beat_classes.py``);
- 10 s window AUROC;
- localisation AUROC for two draws of synthetic anomalies (20 excerpts of 60 s per record,
  seeds 1 and 2), and per kind for the first;
- the stream step's cost per window relative to the shipped configuration's, when both have one
  (``bench_graph.py --stream-step``; one quick run, so rerun that script for a figure to
  report).

The shipped configuration is always the first row, the reference of the rules in
``docs/model-consensus.md`` (each figure at most 0.005 below it; the cheapest within 0.002 of the
best localisation). About 2 minutes per variant.

    python research/dev_variants.py --variant k1 neighbours=1 \\
        --variant rhythm rhythm_weight=0.1 neighbours=1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import _bench_path  # noqa: F401  (puts benchmarks/ on sys.path)
import numpy as np
from _workload import MITDB, REPO  # benchmarks/ is on sys.path (_bench_path)
from beat_classes import class_aurocs

SHIPPED = REPO / "models" / "consensus-mitdb-mlii.toml"
KINDS = ("amplitude", "flat", "invert", "noise", "paste", "wander", "warp")


def export_variant(toml: Path, changes: dict[str, str], data: Path, out: Path) -> Path:
    """Calibrate and export ``toml``'s consensus detector with ``changes`` (``[train]`` or
    ``[model]`` keys, as ``ecgstream train --set``)."""
    from ecgstream.training.config import load_train_config
    from ecgstream.training.consensus import fit_consensus

    cfg = load_train_config(toml, {"model_out": str(out)}, changes)
    if cfg.model != "consensus":
        raise SystemExit(
            f"{toml} trains a {cfg.model!r} model; this script compares consensus ones"
        )
    return Path(fit_consensus(cfg, [data], progress=False).model_path)


def measure(model: Path, data: Path, records: list[str], seeds: tuple[int, ...]) -> dict:
    """The DEV figures of one exported model."""
    from ecgstream.evaluation.protocol import ModelSource, evaluate
    from ecgstream.evaluation.splits import mitdb_paths

    paths = mitdb_paths(data, records)
    out: dict = {"localisation": [], "per_kind": {}}
    for seed in seeds:
        report, _, _ = evaluate([ModelSource(model)], paths, localisation=20, seed=seed,
                                progress=False)  # fmt: skip
        source = next(iter(report["sources"].values()))
        out["beat"] = source["beat"]["auroc"]
        out["window"] = source["window_10s"]["auroc"]
        out["localisation"].append(source["localisation"]["auroc"])
        if not out["per_kind"]:
            out["per_kind"] = {k: v["auroc"] for k, v in source["localisation"]["per_kind"].items()}
    out["classes"] = {
        c: a for c, (_, a) in class_aurocs(model, data, records).items() if c != "all"
    }
    return out


def stream_step_ratio(reference: Path, model: Path) -> float | None:
    """Stream step time per window of ``model`` over ``reference``'s (None without both)."""
    from bench_graph import stream_step_run  # benchmarks/ is on sys.path (_bench_path)

    from ecgstream.runtime.scorer import Scorer

    if Scorer(reference).stepper is None or Scorer(model).stepper is None:
        return None
    runs = [stream_step_run(m, 256, 48) for m in (reference, model)]
    best = [np.inf, np.inf]
    for _ in range(3):
        for i, run in enumerate(runs):
            t0 = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best[1] / best[0]


def row(name: str, m: dict, ratio: float | None) -> str:
    loc = " / ".join(f"{v:.3f}" for v in m["localisation"])
    kinds = " ".join(f"{m['per_kind'].get(k, float('nan')):.2f}" for k in KINDS)
    classes = " / ".join(f"{m['classes'].get(c, float('nan')):.4f}" for c in ("S", "V", "F"))
    cost = "-" if ratio is None else f"{ratio:.2f}x"
    return (f"| {name} | {m['beat']:.4f} | {classes} | {m['window']:.3f} | {loc} | {kinds} | "
            f"{cost} |")  # fmt: skip


def variants_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of the variant scripts: ``--variant NAME KEY=VALUE ...`` (repeatable),
    the configuration they vary, the data folder, the localisation seeds and ``--out``."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "KEY=VALUE"),
        help="a name and the [train] keys it changes; repeat for more variants",
    )
    p.add_argument("--config", type=Path, default=SHIPPED, help="the configuration to vary")
    p.add_argument("--data", type=Path, default=MITDB)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p


def parse_variants(p: argparse.ArgumentParser, args) -> list[tuple[str, dict[str, str]]]:
    """``(name, changes)`` of every ``--variant``; a usage error for a malformed one."""
    variants = []
    for name, *pairs in args.variant:
        if not pairs or any("=" not in x for x in pairs):
            p.error(f"--variant {name}: give KEY=VALUE pairs after the name (got {pairs})")
        variants.append((name, dict(x.split("=", 1) for x in pairs)))
    return variants


def main() -> None:
    from ecgstream.evaluation.splits import MITDB_DEV

    p = variants_parser(__doc__)
    args = p.parse_args()
    variants: list[tuple[str, dict[str, str]]] = [("shipped", {}), *parse_variants(p, args)]
    print("| variant | beat | S / V / F | 10 s window | localisation, seeds | per kind "
          f"({' / '.join(KINDS)}) | stream step |", flush=True)  # fmt: skip
    print("|---|---|---|---|---|---|---|", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        for name, changes in variants:
            model = export_variant(args.config, changes, args.data, Path(tmp) / f"{name}.onnx")
            reference = reference or model
            figures = measure(model, args.data, list(MITDB_DEV), tuple(args.seeds))
            ratio = 1.0 if model == reference else stream_step_ratio(reference, model)
            print(row(name, figures, ratio), flush=True)
            results.append({"name": name, "changes": changes, **figures, "stream_step": ratio})
    if args.out:
        args.out.write_text(json.dumps({"config": str(args.config), "variants": results}, indent=1))


if __name__ == "__main__":
    main()
