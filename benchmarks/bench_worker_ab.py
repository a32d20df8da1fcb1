"""Full-worker throughput (b) of worker variants side by side, on one backlog.

Workload: as ``bench_stream.py`` (S monitors, 1 s chunks as int16 binary frames, 4 partitions,
a Tansu broker started on a free port), published once; then each variant runs the full worker
((b) of ``bench_stream.py``: decode, buffers, filters, ONNX Runtime, alerts, outbox, commits) on
that backlog, variants interleaved repeat by repeat so machine load hits them alike. Reported:
monitor-seconds per second per variant (median of repeats) and its ratio to the first variant.

A variant is ``MODEL[:DEPTH[:CATCHUP]]``: an ONNX model, the ``inference_depth`` the worker runs
with (default 1) and its ``catchup_inference_depth`` (default: the worker's, 2). A backlog is
what the worker catches up with (its records are older than ``catchup_after_s``), so ``:1:1``
is a worker with one call in flight throughout.

    nice -n 5 python benchmarks/bench_worker_ab.py --source 12-lead \\
        models/consensus-mitdb-mlii.onnx OTHER.onnx --repeats 3
    nice -n 5 python benchmarks/bench_worker_ab.py --source 12-lead --phases \\
        models/consensus-mitdb-mlii.onnx:1 models/consensus-mitdb-mlii.onnx:2

``--phases`` also reports where each worker's time went (:class:`_workload.PhaseTimer`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import _workload as W
import numpy as np

BATCH_SIZE = 1024


def parse_variant(text: str) -> tuple[Path, int, int | None]:
    model, _, rest = text.partition(":")
    depth, _, catchup = rest.partition(":")
    return W.model_path(model), int(depth or 1), int(catchup) if catchup else None


def _phase_text(ph: dict) -> str:
    steps = ", ".join(f"{k} {ph[f'{k}_ms_per_1000']:.0f}" for k in W.PhaseTimer.STEPS)
    return f"ms per 1,000 messages: {steps}; inference busy {ph['inference_busy']:.0%}"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "variants", nargs="+", help="MODEL[:DEPTH[:CATCHUP]]; the first is the reference"
    )
    p.add_argument("--streams", type=int, default=2000, help="monitors")
    p.add_argument("--seconds", type=int, default=30, help="timed seconds of signal per monitor")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--source", choices=W.SOURCES, default="model", help="as in bench_stream.py")
    p.add_argument(
        "--phases",
        action="store_true",
        help="also time the steps of each worker's poll loop and its inference calls "
        "(ms per 1,000 messages; inference_busy near 1.0 means inference bounds the worker)",
    )
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    W.SOURCE = args.source
    variants = [parse_variant(v) for v in args.variants]

    from ecgstream.streaming.kafka import ensure_topics

    broker, bootstrap = W.start_broker()
    tmp = Path(tempfile.mkdtemp())
    rates: list[list[float]] = [[] for _ in variants]
    phases: list[list[dict]] = [[] for _ in variants]
    try:
        topic = "bench-ab"
        ensure_topics(bootstrap, [topic], 4)
        warm = max(W.warmup_seconds(model) for model, _, _ in variants)
        steps = W.encoded_steps(variants[0][0], args.streams, warm + args.seconds, 1.7e9)
        W.publish_backlog(bootstrap, topic, steps)
        total = args.streams * (warm + args.seconds)
        for r in range(args.repeats):
            for i, (model, depth, catchup) in enumerate(variants):
                W.WORKER_OPTIONS["inference_depth"] = depth
                W.WORKER_OPTIONS.pop("catchup_inference_depth", None)
                if catchup is not None:
                    W.WORKER_OPTIONS["catchup_inference_depth"] = catchup
                rate, worker = W.run_worker(
                    bootstrap,
                    topic,
                    model,
                    tmp,
                    BATCH_SIZE,
                    total=total,
                    skip=args.streams * warm,
                    phases=args.phases,
                )
                rates[i].append(rate)
                line = f"repeat {r + 1}: {args.variants[i]}: {rate:,.0f} monitor-s/s"
                if args.phases:
                    phases[i].append(worker.phases)
                    line += "  " + _phase_text(worker.phases)
                print(line, flush=True)
    finally:
        broker.terminate()
        broker.wait(10)
    medians = [float(np.median(x)) for x in rates]
    result = {"source": args.source, "streams": args.streams, "seconds": args.seconds,
              "variants": []}  # fmt: skip
    for name, x, m, ph in zip(args.variants, rates, medians, phases, strict=True):
        print(f"{name}: median {m:,.0f} monitor-s/s, x{m / medians[0]:.3f}")
        entry = {"variant": name, "rates": x, "median": m, "ratio": m / medians[0]}
        if ph:
            entry["phases"] = ph
            entry["phases_median"] = {k: float(np.median([p[k] for p in ph])) for k in ph[0]}
            print(f"  phases (medians): {_phase_text(entry['phases_median'])}")
        result["variants"].append(entry)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
