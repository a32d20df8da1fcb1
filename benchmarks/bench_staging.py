"""The worker's staging cost per message, in-process: decode and ``Pipeline.prepare``, no broker.

Staging is what the poll loop does between Kafka and the inference call: decode each frame,
check sequence numbers, map and convert leads, run the causal filters and resampler, check
technical conditions and cut windows. Inference itself is not run (the windows are cut and
dropped), so this isolates the Python work per message that ``bench_worker_ab.py --phases``
reports as ``stage`` inside the full worker (where it also waits for the GIL and shares the
cores with inference, Kafka's I/O thread and the broker).

Workload: the streaming benchmarks' monitors (``--source``, as in ``bench_stream.py``), 1 s
chunks as int16 binary frames, in polls of ``--poll`` messages; the first window and hop of
every monitor are a warm-up, not timed. Reported: microseconds per message, median of repeats,
and the windows cut (a check that the work is the same from one version to the next).

With ``--infer`` every poll also goes through inference and the alert state machines
(``Pipeline.process``, in this thread, one ONNX Runtime thread): the worker's whole CPU cost per
message without Kafka, and how many windows the stream step scored.

    python benchmarks/bench_staging.py --source 12-lead --repeats 5
    python benchmarks/bench_staging.py --source 12-lead --repeats 5 --infer
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import _workload as W
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="ONNX model (default: the shipped one)")
    p.add_argument("--source", choices=W.SOURCES, default="model", help="as in bench_stream.py")
    p.add_argument("--streams", type=int, default=2000, help="monitors")
    p.add_argument("--seconds", type=int, default=30, help="timed seconds of signal per monitor")
    p.add_argument("--poll", type=int, default=2000, help="messages per batch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--infer", action="store_true", help="also run inference (Pipeline.process)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    W.SOURCE = args.source

    from ecgstream.runtime.scorer import Scorer
    from ecgstream.streaming.pipeline import Incoming, Pipeline
    from ecgstream.streaming.wire import decode

    model = W.model_path(args.model)
    warm = W.warmup_seconds(model)
    steps = W.encoded_steps(model, args.streams, warm + args.seconds, 1.7e9)
    messages = [kv for step in steps for kv in step]
    split = warm * args.streams
    scorer = Scorer(model)

    stepped: list[int] = []

    def stage(pipeline: Pipeline, batch: list) -> int:
        items = [Incoming(decode(v, k), 0, i) for i, (k, v) in enumerate(batch)]
        if args.infer:
            res = pipeline.process(items)
            stepped.append(res.carried)
            return res.windows
        prep = pipeline.prepare(items)
        return 0 if prep.batch is None else len(prep.batch)

    per_message, windows = [], []
    for r in range(args.repeats):
        pipeline = Pipeline(scorer)
        for i in range(0, split, args.poll):
            stage(pipeline, messages[i : min(i + args.poll, split)])
        stepped.clear()
        timed = messages[split:]
        gc.collect()
        gc.freeze()  # as the worker does once it runs (docs/reliability.md)
        t = time.perf_counter()
        n_windows = sum(
            stage(pipeline, timed[i : i + args.poll]) for i in range(0, len(timed), args.poll)
        )
        us = 1e6 * (time.perf_counter() - t) / len(timed)
        gc.unfreeze()
        per_message.append(us)
        windows.append(n_windows)
        n_stepped = sum(stepped)
        stepped.clear()
        note = f" ({n_stepped} by the stream step)" if args.infer else ""
        print(f"repeat {r + 1}: {us:.1f} us per message, {n_windows} windows{note}", flush=True)
    median = float(np.median(per_message))
    print(f"median {median:.1f} us per message ({len(messages) - split} messages per repeat)")
    if args.out:
        result = {"source": args.source, "streams": args.streams, "seconds": args.seconds,
                  "poll": args.poll, "infer": args.infer, "model": str(model),
                  "us_per_message": per_message, "median": median,
                  "windows": windows}  # fmt: skip
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
