"""Broker outage of 30 s while a worker consumes and ``ecgstream replay`` publishes in real time.

The Tansu test broker is SIGKILLed and restarted on the same port. By default it keeps its log
and committed offsets on a local S3-compatible server (moto) that outlives it, so it comes back
as a Kafka broker does after a crash; ``--storage memory`` runs it in memory instead, where it
comes back empty (topics recreated, offsets gone). Chunks the replay sends while the broker is
down wait in its producer and are delivered once it is back. Reported: whether the worker stayed
up, what it logged and exported (``ecgstream_broker_up``, ``ecgstream_broker_outages``), the
group's committed offsets before the kill and after the restart, and how many windows were
scored, re-scored and lost (by stream time).

    nice -n 5 python benchmarks/reliability_broker_outage.py --out benchmarks/results/reliability_broker_outage.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from reliability.broker import S3Store  # noqa: E402
from reliability.scenarios import broker_outage  # noqa: E402
from streaming.helpers import build_energy_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--outage-s", type=float, default=30.0)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--model", help="ONNX model (default: a tiny test model)")
    p.add_argument(
        "--storage",
        choices=("s3", "memory"),
        default="s3",
        help="broker storage: s3 (kept across the restart) or memory (lost)",
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp())
    model = Path(args.model) if args.model else build_energy_model(work / "energy.onnx")
    s3 = S3Store(work).start() if args.storage == "s3" else None
    try:
        res = broker_outage(
            work / "run",
            model,
            args.outage_s,
            before_s=10,
            after_s=20,
            n_streams=args.streams,
            s3=s3,
        )
    finally:
        if s3 is not None:
            s3.stop()
    keep = (
        "ecgstream_broker_up",
        "ecgstream_broker_outages_total",
        "ecgstream_windows_total{outcome=scored}",
    )
    for k in ("metrics_before", "metrics_during", "metrics_after"):
        res[k] = {m: v for m, v in res[k].items() if m in keep}
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
