"""UCR anomaly-archive accuracy of the series detectors beside a matrix-profile discord baseline.

Methods: ``consensus`` (segment descriptors against the window and the prefix's nearest
neighbours, :mod:`ecgstream.models.consensus`), the image methods ``pbas``, ``uniad``,
``onenip``, and ``discord``. For every series of a UCR folder (``labels.csv`` or UCR file
names): train each method on the
anomaly-free prefix with :func:`ecgstream.training.series.train_series_array`, export it to ONNX,
score the whole series through :class:`ecgstream.runtime.scorer.Scorer` (the same path as
``ecgstream score``), and count a hit when the argmax of the point score after ``train_end`` lies
within the labelled anomaly widened by 100 samples on each side (the archive's score). The
baseline is the top discord of ``stumpy.stump`` with the subsequence length set to the dominant
period of the prefix (location = centre of the discord subsequence), in the same run.

Results are appended to a JSON-lines file (one line per series and method), so an interrupted run
resumes where it stopped; the summary is printed at the end.

    nice -n 5 python benchmarks/eval_ucr.py --data ../shared/data/ucr-dev --budget 12 \\
        --out benchmarks/results/ucr_dev.jsonl
    nice -n 5 python benchmarks/eval_ucr.py --methods consensus,discord \
        --out benchmarks/results/ucr_dev_consensus.jsonl
    python benchmarks/eval_ucr.py --summary --out benchmarks/results/ucr_dev_consensus.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ecgstream.runtime.scorer import Scorer
from ecgstream.signals.series import dominant_period, read_series, read_ucr_labels
from ecgstream.training.series import train_series_array

MARGIN = 100


def hit(location: int, start: int, end: int) -> bool:
    """The archive's rule: ``location`` within ``[start - 100, end + 100)`` (0-based, end exclusive)."""
    return start - MARGIN <= location < end + MARGIN


def discord_location(x: np.ndarray, train_end: int) -> tuple[int, int]:
    """Centre of the top matrix-profile discord after ``train_end`` and the subsequence length used."""
    import stumpy

    m = max(8, dominant_period(x[:train_end], max_period=min(1000, train_end // 3)))
    mp = stumpy.stump(x.astype(np.float64), m)[:, 0].astype(np.float64)
    mp[~np.isfinite(mp)] = -np.inf
    first = max(0, train_end)
    i = first + int(np.argmax(mp[first:]))
    return i + m // 2, m


def method_location(x: np.ndarray, train_end: int, kind: str, budget: float, tmp: Path) -> dict:
    """Train, export and score one method; the argmax location of its point score after ``train_end``."""
    t0 = time.perf_counter()
    result = train_series_array(
        x, train_end, kind=kind, time_budget_s=budget, model_out=tmp / f"{kind}.onnx"
    )
    train_s = time.perf_counter() - t0
    scorer = Scorer(result.model_path, threads=1, batch_size=256)
    t1 = time.perf_counter()
    scores = scorer.score_signal(x[:, None], 1.0)
    score_s = time.perf_counter() - t1
    after = scores.point_score[train_end:].copy()
    after[~np.isfinite(after)] = -np.inf
    loc = train_end + int(np.argmax(after))
    return {
        "location": loc,
        "window": result.spec.window,
        "train_s": round(train_s, 2),
        "score_s": round(score_s, 2),
        "model_bytes": result.model_path.stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=Path("../shared/data/ucr-dev"))
    ap.add_argument("--methods", default="discord,uniad,pbas,onenip")
    ap.add_argument("--budget", type=float, default=12.0, help="training time budget per model (s)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N series (0 = all)")
    ap.add_argument("--every", type=int, default=1, help="only every k-th series (quick looks)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ucr_dev.jsonl"))
    ap.add_argument(
        "--max-discord-n",
        type=int,
        default=300_000,
        help="skip the O(n^2) discord baseline on longer series (default 300000 points)",
    )
    ap.add_argument(
        "--summary", action="store_true", help="only print the markdown summary of --out"
    )
    args = ap.parse_args(argv)
    if args.summary:
        print(markdown_summary(args.out))
        return 0

    import torch

    torch.set_num_threads(1)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    items = read_ucr_labels(args.data)[:: args.every]
    if args.limit:
        items = items[: args.limit]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["series"], row["method"]))
    with tempfile.TemporaryDirectory() as tmp_name, open(args.out, "a") as out:
        tmp = Path(tmp_name)
        for k, (path, info) in enumerate(items):
            x = read_series(path).signal[:, 0].astype(np.float64)
            for method in methods:
                if (info.name, method) in done:
                    continue
                t0 = time.perf_counter()
                if method == "discord" and len(x) > args.max_discord_n:
                    print(
                        f"[{k + 1}/{len(items)}] {info.name[:40]:40s} discord  skipped ({len(x)} points)"
                    )
                    continue
                if method == "discord":
                    loc, m = discord_location(x, info.train_end)
                    row = {"location": loc, "m": m}
                else:
                    row = method_location(
                        x.astype(np.float32), info.train_end, method, args.budget, tmp
                    )
                row.update(
                    series=info.name,
                    method=method,
                    n=len(x),
                    train_end=info.train_end,
                    anomaly=[info.anomaly_start, info.anomaly_end],
                    correct=hit(row["location"], info.anomaly_start, info.anomaly_end),
                    seconds=round(time.perf_counter() - t0, 2),
                )
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(
                    f"[{k + 1}/{len(items)}] {info.name[:40]:40s} {method:8s} correct={row['correct']} "
                    f"({row['seconds']:.1f} s)",
                    flush=True,
                )
    summarise(args.out, [p for p, _ in items] and [i.name for _, i in items], methods)
    return 0


def summarise(path: Path, names: list[str], methods: list[str]) -> dict:
    """Accuracy per method over ``names`` from the results file; prints a table."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = [r for r in rows if r["series"] in set(names)]
    table = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        acc = float(np.mean([r["correct"] for r in mine]))
        train = [r.get("train_s") for r in mine if r.get("train_s") is not None]
        table[method] = {
            "n": len(mine),
            "accuracy": round(acc, 3),
            "max_train_s": max(train) if train else None,
        }
        print(
            f"{method:8s} accuracy {acc:.3f} on {len(mine)} series"
            + (f"; training max {max(train):.1f} s" if train else ""),
            file=sys.stdout,
        )
    return table


def markdown_summary(
    path: Path, methods: tuple[str, ...] = ("discord", "consensus", "pbas", "uniad", "onenip")
) -> str:
    """Markdown table: accuracy on the series every method finished (paired), and on all rows."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by: dict[str, dict] = {}
    for r in rows:
        by.setdefault(r["series"], {})[r["method"]] = r
    present = [m for m in methods if any(m in v for v in by.values())]
    paired = [s for s, v in by.items() if all(m in v for m in present)]
    lines = [
        f"| method | correct on the {len(paired)} series all methods finished | accuracy | "
        "all series run (accuracy) | median / max training s | model size |",
        "|---|---|---|---|---|---|",
    ]
    for m in present:
        ok = sum(bool(by[s][m]["correct"]) for s in paired)
        mine = [v[m] for v in by.values() if m in v]
        acc_all = np.mean([r["correct"] for r in mine])
        train = [r["train_s"] for r in mine if "train_s" in r]
        sizes = [r["model_bytes"] for r in mine if "model_bytes" in r]
        t = f"{np.median(train):.0f} / {max(train):.0f}" if train else "-"
        size = f"{np.median(sizes) / 1e3:.0f} kB" if sizes else "-"
        lines.append(
            f"| {m} | {ok} | {ok / max(1, len(paired)):.3f} | {len(mine)} ({acc_all:.3f}) | {t} | {size} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
