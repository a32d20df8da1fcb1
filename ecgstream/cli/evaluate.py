"""``ecgstream evaluate``: AUROC / AP against annotations, localisation on synthetic anomalies, plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = """\
Evaluate one or more models (or folders of scores) on annotated WFDB records, on the output of
`ecgstream synth` (records or series with their <name>.mask.npz) or on plain series files.

Scores come from --model (an exported .onnx, scored here with ONNX Runtime) or --scores (a folder
of <record>.npz written by `ecgstream score` or by any tool that follows the scoring contract in
docs/scoring-contract.md). Give several to compare them on the same records in one run.

Metrics (pooled over records, at each record's own sampling rate):
  beat        records with .atr annotations: score of a beat = max point score within +-150 ms
              of its annotation; AAMI abnormal (A a J S V E F f Q) vs normal (N L R e j); AUROC, AP
  window_10s  non-overlapping 10 s windows, score = max point score, label 1 if any abnormal beat
  record      PTB-XL records (label from ptbxl_database.csv: NORM only vs other diagnostic
              superclass): record score = max window_score; AUROC, AP
  synth_masks records written by `ecgstream synth`: point-level AUROC of the point score against
              the saved mask (<name>.mask.npz beside the record), pooled over records
  localisation  with --localisation N (models only): N excerpts per record each get one
              Perlin-noise anomaly with an exact mask; point-level AUROC against the mask,
              with a 95 % bootstrap interval over the excerpts
  alerts      models only: the share of the model's own windows (window_score; normal: only
              normal beats, abnormal: any abnormal beat) at or over its default alert threshold,
              the false alarms and detections `ecgstream run` would give on these records;
              when the model ranks the windows well (AUROC >= 0.75) but fewer than half of
              the abnormal ones reach the threshold, also the threshold that would alert half
              of them and how to choose thresholds for a population (--alerts --operating-point)

Writes OUT/report.json, OUT/roc.png, OUT/example.png (a record with its score trace and the
annotated abnormal beats marked) and, with --localisation, OUT/localisation.png (one excerpt of
each kind of synthetic anomaly with its mask and every model's point score).

examples:
  ecgstream evaluate --model models/consensus-mitdb-mlii.onnx --out eval/ ../shared/data/mitdb-ds1/101
  ecgstream score --model m.onnx --out scores/ data/ && \\
      ecgstream evaluate --scores scores/ --out eval/ data/
  ecgstream evaluate --model a.onnx --model pca.onnx --localisation 5 --out eval/ data/
  ecgstream evaluate --model ptbxl.onnx --folds 7 8 --out eval/ ../shared/data/ptbxl-dev
  ecgstream evaluate --alerts --model models/consensus-mitdb-mlii.onnx --out eval/ \\
      ../shared/data/mitdb-ds1/203 ../shared/data/mitdb-ds1/205
      (alerts judged like an arrhythmia monitor, EC57-style, record by record: docs/alerts.md)
  ecgstream synth --out synth/ --count 5 --after 60 --seed 1 ../shared/data/mitdb-ds1/208 && \\
      ecgstream evaluate --model models/consensus-mitdb-mlii.onnx --out eval/ synth/
  ecgstream evaluate --model m.onnx --localisation 20 --kinds wander --strength 2 --out eval/ data/
      (how large a baseline shift must be before the model localises it: wander and noise
      scale with --strength, the other kinds do not)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ecgstream.signals.synth import KINDS_1D

    p = sub.add_parser(
        "evaluate",
        help="AUROC/AP against annotations, localisation on synthetic anomalies, plots",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="records, .hea files or folders")
    p.add_argument(
        "--model", action="append", type=Path, default=[], help="exported .onnx (repeatable)"
    )
    p.add_argument(
        "--scores",
        action="append",
        type=Path,
        default=[],
        help="folder of <record>.npz (repeatable)",
    )
    p.add_argument(
        "--out", required=True, type=Path, help="output folder for report.json and plots"
    )
    p.add_argument(
        "--localisation",
        type=int,
        default=0,
        metavar="N",
        help="synthetic anomalies per record (default 0)",
    )
    p.add_argument(
        "--excerpt-s",
        type=float,
        default=60.0,
        help="length of each localisation excerpt in seconds",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic anomalies")
    p.add_argument(
        "--kinds",
        default=None,
        metavar="K1,K2",
        help="kinds of synthetic anomaly for --localisation, comma-separated (default all: "
        f"{','.join(KINDS_1D)})",
    )
    p.add_argument(
        "--strength",
        type=float,
        default=1.0,
        help="multiplies the size of the additive anomalies (wander, noise) for --localisation; "
        "1 (default) is the protocol of the figures in docs/benchmarks.md",
    )
    p.add_argument(
        "--folds",
        type=int,
        nargs="+",
        metavar="K",
        help="PTB-XL folders: only ECGs of these strat_folds (e.g. 7 8)",
    )
    p.add_argument(
        "--alerts",
        action="store_true",
        help="replay the records through the streaming pipeline (as `ecgstream run --replay`) "
        "and judge its alerts EC57-style against the annotations: OUT/alerts.json, "
        "OUT/alerts.md and one OUT/timeline-<record>.png per record (docs/alerts.md)",
    )
    p.add_argument(
        "--operating-point",
        type=float,
        metavar="FALSE_PER_HOUR",
        help="with --alerts: choose the warning threshold (at most this many false alerts per "
        "monitor-hour on these records) and the critical one (a tenth of it, anomaly alerts) "
        "and report the records at them",
    )
    p.add_argument(
        "--write-thresholds",
        action="store_true",
        help="with --operating-point: write the chosen thresholds into the model file's metadata",
    )
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    p.add_argument("--no-plots", action="store_true", help="write only report.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _fmt(block: dict | None, key: str) -> str:
    if not block or block.get(key) is None:
        return "-"
    return f"{block[key]:.3f}"


def localisation_per_kind(report: dict) -> dict[str, dict[str, float | None]]:
    """``{source: {kind of synthetic anomaly: point AUROC}}`` of a report (empty without
    localisation)."""
    return {
        name: {
            kind: block.get("auroc")
            for kind, block in entry.get("localisation", {}).get("per_kind", {}).items()
        }
        for name, entry in report.get("sources", {}).items()
    }


def threshold_hint(name: str, a: dict) -> str:
    """What to do when a model ranks its abnormal windows well but its alert threshold is above
    most of them ("" otherwise)."""
    if a.get("auroc") is None or a["abnormal_over"] is None or a["abnormal_over"] >= 0.5:
        return ""
    if a["auroc"] < 0.75:
        return ""
    return (
        f"  {name} ranks these abnormal windows above the normal ones (window AUROC "
        f"{a['auroc']:.2f}), but its alert threshold {a['threshold']:.2f} is above "
        f"{_share(1 - a['abnormal_over'])} of them: the threshold is set for few false alerts "
        f"on the records it was chosen on. At {a['half_threshold']:.2f} half of them would be "
        f"over it, with {_share(a['normal_over_at_half'])} of the normal windows. To choose "
        f"thresholds for your own population, run `ecgstream evaluate --alerts "
        f"--operating-point FALSE_ALERTS_PER_HOUR --model MODEL --out DIR RECORDS` on annotated "
        f"records of it (then test on others)."
    )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def summary_lines(report: dict) -> list[str]:
    """A small text table of the headline figures of a report."""
    lines = [
        f"{'source':<28} {'beat AUROC':>10} {'beat AP':>8} {'10s AUROC':>10} {'rec AUROC':>10} {'loc AUROC':>10}"
    ]
    for name, entry in report["sources"].items():
        lines.append(
            f"{name[:28]:<28} {_fmt(entry.get('beat'), 'auroc'):>10} {_fmt(entry.get('beat'), 'ap'):>8} "
            f"{_fmt(entry.get('window_10s'), 'auroc'):>10} {_fmt(entry.get('record'), 'auroc'):>10} "
            f"{_fmt(entry.get('localisation'), 'auroc'):>10}"
        )
    alerts = {n: e["alerts"] for n, e in report["sources"].items() if e.get("alerts")}
    if alerts:
        lines.append("model windows at or over the default alert threshold:")
        for name, a in alerts.items():
            lines.append(
                f"{name[:28]:<28} threshold {a['threshold']:.2f}: {_share(a['normal_over'])} of "
                f"{a['normal_windows']} normal windows (false alarms), {_share(a['abnormal_over'])} "
                f"of {a['abnormal_windows']} abnormal ones"
            )
            hint = threshold_hint(name, a)
            if hint:
                lines.append(hint)
    for name, entry in report["sources"].items():
        masks = entry.get("synth_masks")
        if masks:
            lines.append(
                f"{name[:28]:<28} synthetic anomalies (`ecgstream synth` masks): point AUROC "
                f"{_fmt(masks, 'auroc')} over {masks['n_records']} record(s)"
            )
        if not any(
            entry.get(k) for k in ("beat", "window_10s", "record", "localisation", "synth_masks")
        ):
            lines.append(
                f"{name[:28]:<28} nothing to measure: these records have no beat annotations "
                "(.atr), no PTB-XL labels and no `ecgstream synth` masks (<name>.mask.npz); "
                "add --localisation N to inject anomalies here"
            )
    for name, entry in report["sources"].items():
        loc = entry.get("localisation", {})
        if loc.get("auroc_interval_95"):
            low, high = loc["auroc_interval_95"]
            lines.append(
                f"{name[:28]:<28} localisation AUROC {loc['auroc']:.3f}, 95 % interval "
                f"{low:.3f}-{high:.3f} (bootstrap over its {loc['n_excerpts']} excerpts)"
            )
    per_kind = localisation_per_kind(report)
    kinds = sorted({k for aurocs in per_kind.values() for k in aurocs})
    if kinds:
        lines.append("localisation AUROC per kind of synthetic anomaly:")
        lines.append(f"{'source':<28} " + " ".join(f"{k[:10]:>10}" for k in kinds))
        for name, aurocs in per_kind.items():
            cells = " ".join(f"{_fmt(aurocs, k):>10}" for k in kinds)
            lines.append(f"{name[:28]:<28} {cells}")
    return lines


def write_plots(
    out: Path, collected: dict, example, sources: list, report: dict | None = None
) -> list[str]:
    """ROC curves, the example record and the localisation examples; returns the file names."""
    from ecgstream.evaluation.plots import plot_example, plot_localisation, plot_roc

    written = []
    if plot_roc(collected, out / "roc.png") is not None:
        written.append("roc.png")
    if example is not None:
        first = sources[0]
        leads = getattr(getattr(first, "spec", None), "leads", None)
        record = example.record
        if leads:
            from ecgstream.signals.records import select_leads

            record = select_leads(record, leads)
        threshold = (
            first.spec.threshold if getattr(first, "spec", None) and first.spec.thresholds else None
        )
        plot_example(
            record.signal,
            record.fs,
            {name: s.point_score for name, s in example.scores.items()},
            out / "example.png",
            beat_samples=example.beats.samples,
            beat_abnormal=example.beats.abnormal,
            threshold=threshold,
            title=f"record {record.name} ({record.leads[0]})",
        )
        written.append("example.png")
    examples = {n: c.localisation_examples for n, c in collected.items() if c.localisation_examples}
    if examples:
        per_kind = localisation_per_kind(report or {})
        if plot_localisation(examples, per_kind, out / "localisation.png") is not None:
            written.append("localisation.png")
    return written


def _in_folds(paths: list[Path], folds: set[int]) -> list[Path]:
    """The PTB-XL records among ``paths`` whose ``strat_fold`` is in ``folds``."""
    from ecgstream.signals.labels import ptbxl_table

    keep: set[Path] = set()
    roots = {
        next((q for q in p.parents if (q / "ptbxl_database.csv").exists()), None) for p in paths
    }
    if None in roots:
        raise ValueError("--folds applies to PTB-XL folders (with ptbxl_database.csv) only")
    for root in roots:
        for res in ("lr", "hr"):
            table = ptbxl_table(root, res)
            keep |= {
                Path(p).resolve()
                for p, f in zip(table["path"], table["strat_fold"], strict=True)
                if f in folds
            }
    return [p for p in paths if p.resolve() in keep]


def run_alerts(args: argparse.Namespace) -> int:
    """``--alerts``: EC57-style alert figures of one model on annotated records."""
    from ecgstream.evaluation.alerts import evaluate_alerts, table_lines
    from ecgstream.runtime.scorer import Scorer
    from ecgstream.signals.records import list_records

    if len(args.model) != 1 or args.scores:
        raise ValueError("--alerts needs exactly one --model (its alerts are replayed)")
    paths = [p for p in list_records(*args.paths) if p.with_suffix(".atr").exists()]
    if not paths:
        raise ValueError(f"no records with .atr annotations found in {args.paths}")
    args.out.mkdir(parents=True, exist_ok=True)
    scorer = Scorer(args.model[0], threads=args.threads)
    if args.operating_point is not None:
        return _operating_point(args, scorer, paths)
    if args.write_thresholds:
        raise ValueError("--write-thresholds needs --operating-point FALSE_PER_HOUR")
    report = evaluate_alerts(scorer, paths, plots=None if args.no_plots else args.out)
    lines = table_lines(report)
    (args.out / "alerts.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (args.out / "alerts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"report: {args.out / 'alerts.json'}")
    return 0


def _operating_point(args: argparse.Namespace, scorer, paths: list[Path]) -> int:
    from ecgstream.evaluation.alerts import (
        operating_point,
        reference_events,
        replay_record,
        write_thresholds,
    )

    if not args.operating_point > 0:
        raise ValueError(f"--operating-point must be > 0, got {args.operating_point}")
    runs = [(replay_record(scorer, p), reference_events(p)) for p in paths]
    op = operating_point(runs, args.operating_point)
    (args.out / "operating-point.json").write_text(json.dumps(op, indent=2, default=float) + "\n")
    p = op["pooled"]
    print(
        f"warning {op['warning']:.2f}, critical {op['critical']:.2f} for at most "
        f"{args.operating_point:g} false alerts per monitor-hour on {len(paths)} records: "
        f"{p['false_per_hour']:.2f} false/h, ventricular runs {p['v_runs_alerted']}/{p['v_runs']}, "
        f"AF episodes {p['af_alerted']}/{p['af_episodes']}"
    )
    if args.write_thresholds:
        write_thresholds(args.model[0], op["warning"], op["critical"])
        print(f"written to {args.model[0]} (refresh SHA256SUMS for a shipped model)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.alerts:
        return run_alerts(args)
    from ecgstream.evaluation.protocol import ModelSource, NpzSource, evaluate
    from ecgstream.signals.records import list_records
    from ecgstream.signals.synth import parse_kinds

    if not args.model and not args.scores:
        raise ValueError("give at least one --model or --scores folder")
    if args.localisation and not args.model:
        raise ValueError("--localisation needs a --model (synthetic anomalies must be scored)")
    if (args.kinds is not None or args.strength != 1.0) and not args.localisation:
        raise ValueError("--kinds and --strength shape the synthetic anomalies of --localisation N")
    if not args.strength > 0:
        raise ValueError(f"--strength must be > 0, got {args.strength}")
    kinds = parse_kinds(args.kinds) if args.kinds is not None else None
    sources = [ModelSource(m, threads=args.threads) for m in args.model]
    sources += [NpzSource(s) for s in args.scores]
    names = [s.name for s in sources]
    for i, s in enumerate(sources):  # keep names distinct (two models with the same name)
        if names.count(s.name) > 1:
            s.name = f"{s.name}#{i + 1}"
    from ecgstream.signals.series import is_series_path

    paths: list[Path] = []
    for raw in args.paths:  # plain series files by suffix, everything else is WFDB
        paths.extend([Path(raw)] if is_series_path(raw) else list_records(raw))
    if args.folds:
        paths = _in_folds(paths, set(args.folds))
    if not paths:
        raise ValueError(f"no records found in {args.paths}")
    report, collected, example = evaluate(
        sources,
        paths,
        localisation=args.localisation,
        excerpt_s=args.excerpt_s,
        seed=args.seed,
        progress=not args.no_progress,
        kinds=kinds,
        strength=args.strength,
    )
    if len(report["skipped"]) == len(paths):
        raise ValueError(f"no record could be evaluated: {next(iter(report['skipped'].values()))}")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        report["plots"] = write_plots(args.out, collected, example, sources, report)
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    print("\n".join(summary_lines(report)))
    print(f"report: {args.out / 'report.json'}")
    return 0
