"""Streaming worker throughput and latency through a real broker (Tansu), side by side.

Workload: S streams of the model's lead set (MIT-BIH MLII at 360 Hz from ../shared/data when
present, else neurokit2 synthetic ECG), or with ``--source 12-lead`` 12-lead 500 Hz PTB-XL ECGs
that the worker maps to the model's leads and resamples; 1 s chunks as int16 binary frames,
4 partitions. (a) and (b) run ``--repeats`` times, alternating; medians are reported.

(a) consume-only: kafka-python (with crc32c) polls every message, nothing else: the ceiling.
(b) the full worker (decode, buffers, causal filters, ONNX Runtime, alerts, outbox, commits),
    one process, on the same messages, timed once every monitor scores a window per hop (the
    first window + hop seconds of each monitor are published and consumed but not timed).
Both are reported as monitor-seconds per second per worker process (1 s chunks: messages/s).
(c) latency: S/2-capacity monitors published in real time by a separate process; latency is
    from a chunk's publication (Kafka CreateTime) to the alerts of its batch being durable.
    The reference beside it: the same load read by a bare kafka-python consumer (with the
    worker's fetch settings), latency to the poll that returns the chunk. The broker and the
    publisher share the machine's cores with the worker; their CPU is reported too.

    nice -n 5 python benchmarks/bench_stream.py --streams 2000 --seconds 30 --latency-seconds 40
    nice -n 5 python benchmarks/bench_stream.py --source 12-lead --inference-depth 2 --streams 2000
    nice -n 5 python benchmarks/bench_stream.py --model models/mmae-mitdb-mlii.onnx --streams 2000
    nice -n 5 python benchmarks/bench_stream.py --model tiny --streams 2000 --seconds 15 --out r.json
    nice -n 5 python benchmarks/bench_stream.py --source 12-lead --worker-cpus 0   # broker apart
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from _workload import (  # benchmarks/ is on sys.path when run as a script
    LoadProducer,
    cpu_seconds,
    encoded_steps,
    on_cpus,
    parse_args,
    pin_apart,
    publish_backlog,
    run_worker,
    start_broker,
    warmup_seconds,
)

#: windows per ONNX Runtime call in the benchmark's workers
BATCH_SIZE = 1024


def publish_realtime(bootstrap: str, topic: str, model: Path, streams: int, seconds: int) -> None:
    """Publish ``streams`` monitors in real time, each second's chunks spread over 10 slices."""
    t_start = float(int(time.time()))
    steps = encoded_steps(model, streams, seconds, t_start)
    producer = LoadProducer(bootstrap, linger_ms=2)
    wall0 = time.time()
    for i, step in enumerate(steps):
        for s in range(10):
            due = wall0 + i + s / 10
            if due > time.time():
                time.sleep(due - time.time())
            for key, value in step[s::10]:
                producer.send(topic, key, value)
        producer.flush()
    producer.close()


def start_publisher(args, model: Path, bootstrap: str, topic: str, monitors: int, cpus: set[int]):
    """This script in ``--publish`` mode: ``monitors`` monitors in real time, in its own
    process (on ``cpus`` if given)."""
    return subprocess.Popen(
        [
            sys.executable, __file__, "--model", str(model), "--source", args.source,
            "--inference-depth", str(args.inference_depth), "--publish", bootstrap, topic,
            str(monitors), str(args.latency_seconds),
        ],
        preexec_fn=on_cpus(cpus),
    )  # fmt: skip


def consume_latency(bootstrap: str, topic: str, seconds: float) -> list[float]:
    """Seconds from publication to the poll that returns each record, for a bare consumer with
    the worker's fetch settings, over ``seconds`` from its first record."""
    from ecgstream.config import RunConfig
    from ecgstream.streaming.kafka import make_consumer

    cfg = RunConfig()
    c = make_consumer(
        bootstrap, f"latency-{uuid.uuid4().hex[:6]}", fetch_max_wait_ms=cfg.fetch_max_wait_ms
    )
    c.subscribe([topic])
    out: list[float] = []
    deadline = time.time() + 60
    while time.time() < deadline:
        polled = c.poll(timeout_ms=cfg.poll_timeout_ms, max_records=cfg.max_poll_records)
        now = time.time()
        for records in polled.values():
            if not out:
                deadline = now + seconds
            out.extend(now - r.timestamp / 1000.0 for r in records)
    c.close()
    return out


def _p50_p99(seconds: np.ndarray) -> tuple[float, float]:
    """Median and 99th percentile of latencies (s); NaN without any."""
    if not len(seconds):
        return float("nan"), float("nan")
    return float(np.percentile(seconds, 50)), float(np.percentile(seconds, 99))


def consume_only(bootstrap: str, topic: str, total: int) -> float:
    from ecgstream.streaming.kafka import make_consumer

    c = make_consumer(bootstrap, f"consume-{uuid.uuid4().hex[:6]}")
    c.subscribe([topic])
    n, t_first = 0, None
    deadline = time.time() + 600
    while n < total and time.time() < deadline:
        polled = c.poll(timeout_ms=200, max_records=2000)
        if polled and t_first is None:
            t_first = time.perf_counter()
        for records in polled.values():
            for r in records:
                n += 1
                _ = r.value  # touch it, nothing more
    elapsed = time.perf_counter() - t_first
    c.close()
    return n / elapsed


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", help="ONNX model, or 'tiny' for a one-node test model (default: the shipped one)"
    )
    p.add_argument("--streams", type=int, default=2000, help="monitors for the throughput runs")
    p.add_argument(
        "--seconds", type=int, default=20, help="seconds of signal per monitor (throughput)"
    )
    p.add_argument("--latency-seconds", type=int, default=30, help="duration of the latency run")
    p.add_argument(
        "--latency-monitors",
        type=int,
        help="monitors of the latency run (default: half of the measured (b)); a fixed number "
        "compares models or workers at the same load",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="(a) and (b) runs, alternating; medians reported"
    )
    p.add_argument(
        "--worker-cpus",
        default="all",
        help="CPUs of (a), (b) and the worker of (c), e.g. '0': the broker and the publisher then "
        "run on the others, as on their own machines (default 'all': everything shares them)",
    )
    args, model = parse_args(p, publish_realtime)

    from ecgstream.runtime.model_file import read_spec
    from ecgstream.streaming.kafka import ensure_topics

    spec = read_spec(model)
    print(
        f"model {model.name}: {spec.name} {spec.version} ({spec.kind}), leads {spec.leads}, "
        f"{spec.window_s:g} s windows every {spec.hop_s:g} s at {spec.fs:g} Hz",
        flush=True,
    )
    broker, bootstrap = start_broker()
    worker_cpus, other_cpus = pin_apart(args.worker_cpus, broker.pid)  # (a), (b), (c)'s worker
    tmp = Path(tempfile.mkdtemp())
    result: dict = {
        "model": spec.name,
        "kind": spec.kind,
        "leads": spec.leads,
        "window_s": spec.window_s,
        "hop_s": spec.hop_s,
        "streams": args.streams,
        "seconds": args.seconds,
        "source": args.source,
        "threads": args.threads,
        "worker_cpus": sorted(worker_cpus) or "all",
        "inference_depth": args.inference_depth,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
    }
    try:
        topic = "bench-throughput"
        ensure_topics(bootstrap, [topic], 4)
        warm = warmup_seconds(model)
        steps = encoded_steps(model, args.streams, warm + args.seconds, 1_700_000_000.0)
        total = args.streams * (warm + args.seconds)
        result["warmup_seconds"] = warm
        elapsed = publish_backlog(bootstrap, topic, steps)
        result["message_bytes"] = len(steps[0][0][1])
        print(
            f"published {total} chunks ({result['message_bytes']} bytes each) in {elapsed:.1f} s",
            flush=True,
        )

        rates_a, rates_b, ratios = [], [], []
        for r in range(args.repeats):  # (a) and (b) alternate, so load drifts hit both alike
            rate_a = consume_only(bootstrap, topic, total)
            rate_b, worker = run_worker(
                bootstrap, topic, model, tmp, BATCH_SIZE, total=total, skip=args.streams * warm
            )
            rates_a.append(rate_a)
            rates_b.append(rate_b)
            ratios.append(rate_b / rate_a)
            print(
                f"repeat {r + 1}: (a) consume-only {rate_a:,.0f}, (b) full worker {rate_b:,.0f} "
                f"monitor-s/s after {warm} s per monitor ({worker.summary.windows} windows "
                f"scored in all), (b)/(a) {rate_b / rate_a:.3f}",
                flush=True,
            )
        rate_a, rate_b = float(np.median(rates_a)), float(np.median(rates_b))
        print(
            f"(a) consume-only: {rate_a:,.0f} monitor-s/s, (b) full worker: {rate_b:,.0f} "
            f"monitor-s/s (medians of {args.repeats}); (b)/(a) {rate_b / rate_a:.3f}, "
            f"per repeat {min(ratios):.3f}-{max(ratios):.3f}",
            flush=True,
        )
        result.update(
            consume_only_rate=rate_a,
            worker_rate=rate_b,
            ratio=rate_b / rate_a,
            consume_only_rates=rates_a,
            worker_rates=rates_b,
            ratios=ratios,
            windows=worker.summary.windows,
        )

        half = args.latency_monitors or max(1, int(rate_b / 2))
        topic_l = "bench-latency"
        ensure_topics(bootstrap, [topic_l], 4)
        pub = start_publisher(args, model, bootstrap, topic_l, half, other_cpus)
        cpu0 = (cpu_seconds(broker.pid), cpu_seconds(pub.pid), time.process_time())
        t0 = time.perf_counter()
        _, worker = run_worker(
            bootstrap,
            topic_l,
            model,
            tmp,
            BATCH_SIZE,
            seconds=args.latency_seconds + 5,
            latency=True,
        )
        span = time.perf_counter() - t0
        broker_cores = (cpu_seconds(broker.pid) - cpu0[0]) / span
        publisher_cores = (cpu_seconds(pub.pid) - cpu0[1]) / span
        worker_cores = (time.process_time() - cpu0[2]) / span  # this process: the worker
        pub.wait(120)
        twelfths = [
            round(float(np.percentile(part, 99)) * 1e3, 1)
            for part in np.array_split(np.asarray(worker.latencies), 12)
            if len(part)
        ]  # in completion order: where in the run the tail was
        lat = np.array(worker.latencies[len(worker.latencies) // 6 :])  # skip the group join
        p50, p99 = _p50_p99(lat)
        # every monitor starts at once, so every first window (which has no previous window's
        # sorts to take over) comes within one hop: also the tail after them, chunks in
        # completion order from (window + hop + 2 s) x monitors on
        steady = np.array(worker.latencies[half * (warm + 2) :])
        p99_steady = float(np.percentile(steady, 99)) if len(steady) else float("nan")
        print(
            f"(c) latency at {half} monitors "
            f"({'as asked' if args.latency_monitors else 'half capacity'}): "
            f"p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms "
            f"over {len(lat)} chunks; p99 after the first windows {p99_steady * 1e3:.0f} ms; "
            f"p99 per twelfth of the run {[round(t) for t in twelfths]} ms",
            flush=True,
        )
        # the reference: the same load read by a bare consumer, on a topic of its own
        topic_r = "bench-latency-reference"
        ensure_topics(bootstrap, [topic_r], 4)
        pub = start_publisher(args, model, bootstrap, topic_r, half, other_cpus)
        cpu0_r, t0 = cpu_seconds(broker.pid), time.perf_counter()
        ref_all = consume_latency(bootstrap, topic_r, args.latency_seconds + 5)
        broker_cores_ref = (cpu_seconds(broker.pid) - cpu0_r) / (time.perf_counter() - t0)
        pub.wait(120)
        ref = np.array(ref_all[len(ref_all) // 6 :])  # skip the group join, as for the worker
        ref_p50, ref_p99 = _p50_p99(ref)
        print(
            f"(c) reference, a bare consumer at the same load: p50 {ref_p50 * 1e3:.0f} ms, "
            f"p99 {ref_p99 * 1e3:.0f} ms over {len(ref)} records; broker CPU "
            f"{broker_cores_ref:.2f} cores; during the worker's run: worker {worker_cores:.2f}, "
            f"broker {broker_cores:.2f}, publisher {publisher_cores:.2f} cores",
            flush=True,
        )
        result.update(
            latency_reference_p50_ms=ref_p50 * 1e3,
            latency_reference_p99_ms=ref_p99 * 1e3,
            broker_cores_worker_run=broker_cores,
            broker_cores_reference_run=broker_cores_ref,
            publisher_cores_worker_run=publisher_cores,
            worker_cores=worker_cores,
        )
        result.update(
            latency_monitors=half,
            latency_p50_ms=p50 * 1e3,
            latency_p99_ms=p99 * 1e3,
            latency_chunks=len(lat),
            latency_p99_after_first_windows_ms=p99_steady * 1e3,
            latency_p99_per_twelfth_ms=twelfths,
            loadavg_end=os.getloadavg()[0],
        )
    finally:
        broker.terminate()
        broker.wait(10)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
