"""``ecgstream synth``: copies of records or series with Perlin-noise anomalies and their exact masks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = """\
Inject Perlin-noise anomalies (amplitude change, baseline wander, noise burst, flat line,
inversion, time warp, pasted segment) into WFDB records or plain series, and write each result
with its exact anomaly mask.

PATH is a WFDB record (without extension), a folder of records, or a series file (.txt one value
per line as in the UCR archive, .csv, .npy). For each input it writes, into OUT:
  <name>.hea/.dat (WFDB input) or <name><suffix> (series input): the signal with anomalies;
  <name>.mask.npz: mask (bool, one per sample: True where the signal was changed), fs, and one
                   entry per anomaly in kind, start, end (sample indices, end exclusive) and
                   params (JSON);
and OUT/RECORDS listing the WFDB outputs, so OUT can be scored as a folder.
Anomalies never overlap and never start before --after; the same --seed gives the same output.
Lengths are in seconds for WFDB records and in samples for series (their rate is taken as 1 Hz).

examples:
  ecgstream synth --out synth/ --count 5 --after 60 --seed 1 ../shared/data/mitdb-ds1/208
  ecgstream synth --out synth/ --kinds flat,invert --min-len 50 --max-len 200 series.txt
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ecgstream.signals.synth import KINDS_1D

    p = sub.add_parser(
        "synth",
        help="inject Perlin-noise anomalies with exact masks into records or series",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="WFDB records, folders or series files")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--count", type=int, default=3, help="anomalies per input (default 3)")
    p.add_argument(
        "--kinds",
        default=",".join(KINDS_1D),
        help=f"comma-separated kinds to draw from (default all: {','.join(KINDS_1D)})",
    )
    p.add_argument(
        "--min-len",
        type=float,
        default=None,
        help="shortest anomaly span (s; samples for series). Default 0.5 s / 20 samples",
    )
    p.add_argument(
        "--max-len",
        type=float,
        default=None,
        help="longest anomaly span (s; samples for series). Default 3 s / 200 samples",
    )
    p.add_argument(
        "--after",
        type=float,
        default=0.0,
        help="keep the first AFTER s (samples for series) clean, e.g. for training",
    )
    p.add_argument(
        "--roughness",
        type=float,
        default=1.0,
        help="0 = one clean interval per anomaly; larger = irregular, fragmented",
    )
    p.add_argument(
        "--strength", type=float, default=1.0, help="multiplies additive changes (wander, noise)"
    )
    p.set_defaults(func=run)


def _write_wfdb(
    folder: Path, name: str, signal, fs: float, leads: list[str], units: list[str]
) -> None:
    import numpy as np
    import wfdb

    span = np.maximum(np.abs(signal).max(axis=0), 1e-6)
    gain = np.floor(32000.0 / span)  # int16 with headroom, per lead
    wfdb.wrsamp(
        name,
        fs=fs,
        units=units or ["mV"] * len(leads),
        sig_name=leads,
        p_signal=signal.astype(np.float64),
        fmt=["16"] * len(leads),
        adc_gain=gain.tolist(),
        baseline=[0] * len(leads),
        write_dir=str(folder),
    )


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from ecgstream.signals.records import RecordError, list_records, read_record
    from ecgstream.signals.series import is_series_path, read_series, write_series
    from ecgstream.signals.synth import inject_many, parse_kinds

    kinds = parse_kinds(args.kinds)
    if args.count < 1:
        raise ValueError(f"--count must be at least 1, got {args.count}")
    inputs: list[Path] = []
    for raw in args.paths:
        inputs.extend([Path(raw)] if is_series_path(raw) else list_records(raw))
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    wfdb_names: list[str] = []
    failed = 0
    for path in tqdm(inputs, desc="synth", unit="input", disable=len(inputs) < 2):
        series = is_series_path(path)
        try:
            rec = read_series(path) if series else read_record(path)
            min_len = args.min_len if args.min_len is not None else (20.0 if series else 0.5)
            max_len = args.max_len if args.max_len is not None else (200.0 if series else 3.0)
            out, mask, events = inject_many(
                rec.signal,
                rec.fs,
                rng,
                count=args.count,
                after=int(round(args.after * rec.fs)),
                kinds=kinds,
                min_len_s=min_len,
                max_len_s=max_len,
                roughness=args.roughness,
                strength=args.strength,
            )
        except (RecordError, ValueError) as exc:
            failed += 1
            print(f"ecgstream synth: skipped {path}: {exc}", file=sys.stderr)
            continue
        if series:
            write_series(args.out / path.name, out, rec.leads)
        else:
            _write_wfdb(args.out, rec.name, out, rec.fs, rec.leads, rec.units)
            wfdb_names.append(rec.name)
        np.savez(
            args.out / f"{rec.name}.mask.npz",
            mask=mask,
            fs=np.float64(rec.fs),
            kind=np.array([e["kind"] for e in events]),
            start=np.array([e["start"] for e in events], np.int64),
            end=np.array([e["end"] for e in events], np.int64),
            params=np.array(
                [
                    json.dumps({k: v for k, v in e.items() if k not in ("kind", "start", "end")})
                    for e in events
                ]
            ),
        )
        summary = ", ".join(f"{e['kind']}@{e['start']}" for e in events)
        print(
            f"{rec.name}: {len(events)} anomalies ({summary}); {mask.mean():.2%} of samples masked"
        )
    if wfdb_names:
        listing = args.out / "RECORDS"
        old = listing.read_text().split() if listing.exists() else []
        listing.write_text("\n".join(dict.fromkeys(old + wfdb_names)) + "\n")
    return 1 if failed == len(inputs) else 0
