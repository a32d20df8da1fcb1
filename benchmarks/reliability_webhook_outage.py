"""Webhook receiver failing for a full minute (500s, then timeouts, refused connections, slow
answers), with the worker SIGKILLed and restarted halfway, then recovery.

Reported: alerts stored in the outbox, alerts delivered after recovery (all of them, or the
run says so), the time from recovery to the last delivery (bounded by the exponential backoff
reached during the outage), requests per failure mode, retry gaps and duplicate deliveries.

    nice -n 5 python benchmarks/reliability_webhook_outage.py --out benchmarks/results/reliability_webhook_outage.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from reliability.scenarios import webhook_outage  # noqa: E402
from streaming.helpers import build_energy_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--outage-s", type=float, default=60.0)
    p.add_argument("--streams", type=int, default=6)
    p.add_argument(
        "--model", help="ONNX model (default: a tiny test model that alerts on noise bursts)"
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp())
    model = Path(args.model) if args.model else build_energy_model(work / "energy.onnx")
    res = webhook_outage(work / "run", model, args.outage_s, n_streams=args.streams)
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
