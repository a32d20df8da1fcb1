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

With ``--history`` (models with a ``history`` section) each model's stream step and, beside it
in the same run, its history term alone (:meth:`History.advance` and :meth:`History.apply` as
the stepper runs them): ``--batch`` streams with full banks (2 min of their own windows), one
window each per call, as a live worker's batch holds them; the ratio is history / stream step.
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
    stepper = getattr(stepper, "inner", stepper)  # the stream step without the history term
    if not isinstance(stepper, ConsensusStepper):
        raise SystemExit(f"{model}: the model has no stream step")
    windows = windows_for(model, n)
    _, _, carried, floors = stepper.score_windows_carry(windows)
    parts = [slice(a, a + batch) for a in range(0, n, batch)]

    def run() -> None:
        for part in parts:
            stepper.score_carried(windows[part], carried[part], floors[part])

    return run


def history_run(model: Path, n: int, batch: int):
    """Calls of the history term on ``n`` windows: ``batch`` streams with full banks, one window
    each per call."""
    import copy

    from ecgstream.runtime.scorer import Scorer
    from ecgstream.signals.preprocess import preprocess
    from ecgstream.signals.windows import frame, window_starts

    scorer = Scorer(model, threads=1, batch_size=batch)
    hist, spec = scorer.history, scorer.spec
    if hist is None:
        raise SystemExit(f"{model}: the model has no history section")
    sig, fs, _ = source_signal(spec.leads, 200)
    x, _ = preprocess(sig[: int(200 * fs)], fs, spec.preprocess_config)
    warm = frame(x, window_starts(len(x), spec.window, spec.hop), spec.window)[:36]
    state = hist.new_state("bench")
    starts = np.arange(len(warm)) * spec.hop
    hist.advance([state], [0], [starts], warm, np.zeros(len(warm)))
    assert state.entries == hist.slots * hist.per_window  # a full bank
    states = [copy.deepcopy(state) for _ in range(batch)]
    windows = windows_for(model, n)
    parts = [slice(a, a + batch) for a in range(0, n, batch)]
    next_start = [int(starts[-1]) + spec.hop]
    scale = float(spec.score_norm["scale"])

    def run() -> None:
        for part in parts:
            w = windows[part]
            s = [np.array([next_start[0]])] * len(w)
            terms = hist.advance(states[: len(w)], [0] * len(w), s, w, np.zeros(len(w)))
            hist.apply(np.zeros((len(w), spec.window), np.float32), np.zeros(len(w), np.float32),
                       terms, scale)  # fmt: skip
            next_start[0] += spec.hop

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
    p.add_argument(
        "--history", action="store_true", help="time each model's stream step and history term"
    )
    args = p.parse_args()

    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")  # as the worker runs numpy
    make_run = stream_step_run if args.stream_step else _graph_run
    if args.history:
        labels = [f"{m} {what}" for m in args.models for what in ("stream step", "history")]
        run_of = [
            f(m, args.windows, args.batch)
            for m in args.models
            for f in (stream_step_run, history_run)
        ]
    else:
        labels = [str(m) for m in args.models]
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
    for m, t in zip(labels, times, strict=True):
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
                                        "history": args.history,
                                        "models": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
