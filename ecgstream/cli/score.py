"""``ecgstream score``: the scoring contract (one .npz per record, see docs/scoring-contract.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = """\
Score WFDB records with an exported model, using ONNX Runtime only.

PATH is a record path without extension (data/100), a .hea file, or a folder (read from its
RECORDS file, a PTB-XL ptbxl_database.csv, or every .hea in it), or a plain series file (.txt
one value per line as in the UCR archive, .csv, .npy; fs = 1.0). For each record it writes
OUT/<record>.npz with fs, point_score (one score per sample at the record's own rate, NaN where
no window covered it), window_start, window_end (sample indices) and window_score.
Larger means more anomalous; scores are in calibrated units (the model's threshold applies).

example:
  ecgstream score --model models/consensus-mitdb-mlii.onnx --out scores/ ../shared/data/mitdb-ds1
  ecgstream score --model series.onnx --out scores/ series.txt
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score records into per-sample and per-window scores (.npz)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="records, .hea files or folders")
    p.add_argument("--model", required=True, type=Path, help="exported .onnx model")
    p.add_argument("--out", required=True, type=Path, help="output folder for <record>.npz")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per inference call")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ecgstream.runtime.scorer import Scorer
    from ecgstream.signals.records import RecordError, list_records, read_record
    from ecgstream.signals.series import is_series_path, read_series

    scorer = Scorer(args.model, threads=args.threads, batch_size=args.batch_size)
    paths: list[Path] = []
    for raw in args.paths:  # plain series files by suffix, everything else is WFDB
        paths.extend([Path(raw)] if is_series_path(raw) else list_records(raw))
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    progress = paths
    if not args.no_progress and len(paths) > 1:
        from tqdm import tqdm

        progress = tqdm(paths, desc="scoring", unit="record")
    for path in progress:
        try:
            series = is_series_path(path)
            scores = scorer.score_record(read_series(path) if series else read_record(path))
        except RecordError as exc:
            failed += 1
            print(f"ecgstream score: skipped {path}: {exc}", file=sys.stderr)
            continue
        scores.save_npz(args.out / f"{path.stem if series else path.name}.npz")
    if failed:
        print(f"ecgstream score: {failed} of {len(paths)} records skipped", file=sys.stderr)
    written = len(paths) - failed
    print(
        f"ecgstream score: wrote {written} file(s) ({'one .npz per record' if written else 'none'})"
        f" to {args.out}",
        file=sys.stderr,
    )
    return 1 if failed == len(paths) else 0
