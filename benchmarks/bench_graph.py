"""Inference cost of exported models, side by side on the same windows: us per window, ratios.

Workload: ``--windows`` 10 s windows (default 1,024) cut every 5.17 s from the streaming
benchmarks' source signal (15 MIT-BIH DEV records one after the other, lead MLII, so the windows
hold different ECG: sorts run faster on repeated data), preprocessed as each model's spec says,
scored in one ONNX Runtime call per repeat (one thread). The models run interleaved, repeat by
repeat, so machine load affects them alike; the first model is the reference of the ratios.

    python benchmarks/bench_graph.py models/consensus-mitdb-mlii.onnx OTHER.onnx --repeats 7

With ``--stream-step`` the models' stream steps are timed instead, as the worker runs them:
``ConsensusStepper.score_carried`` (numpy sorts of the new segments and the window's medians, then the
stream step graph) in calls of ``--batch`` windows (default 48), each window with a carry of the
right shape.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _workload import source_signal  # benchmarks/ is on sys.path when run as a script


def windows_for(model: Path, n: int) -> np.ndarray:
    """``n`` preprocessed windows ``(n, leads, window)`` of distinct ECG for ``model``."""
    from ecgstream.runtime.model_file import read_spec
    from ecgstream.signals.preprocess import preprocess
    from ecgstream.signals.windows import frame

    spec = read_spec(model)
    span_s = int(n * 5.17 + spec.window_s + 10)
    sig, fs, _ = source_signal(spec.leads, span_s)
    x, _ = preprocess(sig[: int(span_s * fs)], fs, spec.preprocess_config)
    step = max(1, (len(x) - spec.window) // n)
    return frame(x, np.arange(n) * step, spec.window)


def _graph_run(model: Path, n: int, batch: int):
    """A call of the main graph on ``n`` windows, in one ONNX Runtime call (``batch`` unused)."""
    from ecgstream.runtime.model_file import INPUT_NAME
    from ecgstream.runtime.scorer import make_session

    session, feed = make_session(model, threads=1), {INPUT_NAME: windows_for(model, n)}
    return lambda: session.run(None, feed)


def stream_step_run(model: Path, n: int, batch: int):
    """Calls of ``ConsensusStepper.score_carried`` on ``n`` windows, ``batch`` at a time."""
    from ecgstream.runtime.scorer import Scorer
    from ecgstream.runtime.stepping.consensus import ConsensusStepper

    stepper = Scorer(model, threads=1, batch_size=batch).stepper
    if not isinstance(stepper, ConsensusStepper):
        raise SystemExit(f"{model}: the model has no stream step")
    windows = windows_for(model, n)
    _, _, carried, floors = stepper.score_windows_carry(windows)
    parts = [slice(a, a + batch) for a in range(0, n, batch)]

    def run() -> None:
        for part in parts:
            stepper.score_carried(windows[part], carried[part], floors[part])

    return run


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("models", nargs="+", type=Path, help="ONNX models; the first is the reference")
    p.add_argument("--windows", type=int, default=1024, help="windows per call")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--stream-step", action="store_true", help="time the stream steps instead")
    p.add_argument("--batch", type=int, default=48, help="windows per stream step call")
    args = p.parse_args()

    make_run = stream_step_run if args.stream_step else _graph_run
    run_of = [make_run(m, args.windows, args.batch) for m in args.models]
    for run in run_of:
        run()  # warm-up
    times: list[list[float]] = [[] for _ in run_of]
    for _ in range(args.repeats):
        for i, run in enumerate(run_of):
            t = time.perf_counter()
            run()
            times[i].append(time.perf_counter() - t)
    ref = float(np.median(times[0]))
    rows = []
    for m, t in zip(args.models, times, strict=True):
        med = float(np.median(t))
        rows.append(
            {
                "model": str(m),
                "us_per_window_median": med / args.windows * 1e6,
                "us_per_window_min": float(np.min(t)) / args.windows * 1e6,
                "ratio_to_reference": med / ref,
            }
        )
        print(
            f"{m}: {rows[-1]['us_per_window_median']:.0f} us per window "
            f"(min {rows[-1]['us_per_window_min']:.0f}), x{rows[-1]['ratio_to_reference']:.2f}"
        )
    if args.out:
        args.out.write_text(json.dumps({"windows": args.windows, "repeats": args.repeats,
                                        "stream_step": args.stream_step, "batch": args.batch,
                                        "models": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
