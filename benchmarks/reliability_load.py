"""Sustained load: 10 minutes at 80 % of the measured capacity of one worker process.

1. Capacity: S monitors x 20 s are published ahead (after each monitor's first window and hop,
   which are consumed untimed), and one worker (decode, buffers, filters, ONNX Runtime, alerts,
   outbox, commits) consumes them as fast as it can; capacity is its rate in monitor-seconds per
   second (1 s chunks), the figure ``bench_stream.py`` reports.
2. Load: ``0.8 x capacity`` monitors are published in real time for ``--minutes`` by a separate
   process, and one worker consumes them. Every 10 s the benchmark records the worker's RSS,
   its consumer lag (messages behind the end of its partitions) and the latency from a chunk's
   publication (Kafka CreateTime) to its alerts being durable.

By default the worker runs pinned to CPU 0 and the broker and the publisher to the other CPUs,
as if each had its own machine: on a 2-core machine they would otherwise take the worker's
cycles during the load run but not during the capacity run (``--worker-cpus all`` turns this
off). Capacity is then that of one worker process on one core. ``--inline`` runs the worker
with ``overlap_inference = false`` (each batch completed before the next poll).

Checks reported: lag stays bounded (no upward trend), memory stays flat (RSS at start and end),
and the share of chunks whose alerts were durable later than the 500 ms latency target.

    nice -n 5 python benchmarks/reliability_load.py --out benchmarks/results/reliability_load.json
    nice -n 5 python benchmarks/reliability_load.py --minutes 2 --capacity 1500   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import _workload  # noqa: E402
from _workload import (  # noqa: E402
    FrameMaker,
    LoadProducer,
    cpu_seconds,
    encoded_steps,
    make_worker,
    monitor_phase,
    monitor_start,
    on_cpus,
    parse_args,
    pin_apart,
    publish_backlog,
    rss_mb,
    run_worker,
    source_signal,
    start_broker,
    warmup_seconds,
)

TARGET_S = 0.5


def publish_live(bootstrap: str, topic: str, model: Path, streams: int, seconds: int) -> None:
    """Publish ``streams`` monitors in real time for ``seconds``, encoding each second on the fly.

    As in :func:`_workload.encoded_steps`, monitor j started j % hop seconds earlier (its
    sequence numbers are ahead by that much), so windows complete at different seconds; with
    ``ECGSTREAM_LOAD_ALIGNED=1`` (``--aligned``) every monitor starts at the same second (the
    worst case: the windows of all monitors complete in the same second).
    """
    from ecgstream.runtime.model_file import read_spec

    spec = read_spec(model)
    stagger = 1 if os.environ.get("ECGSTREAM_LOAD_ALIGNED") == "1" else max(1, round(spec.hop_s))
    sig, fs, leads = source_signal(spec.leads, seconds + 1)
    frames = FrameMaker(sig, fs, leads)
    starts = [monitor_start(j, frames.seconds, seconds) for j in range(streams)]
    names = [f"bed-{j:05d}" for j in range(streams)]
    keys = [name.encode() for name in names]
    producer = LoadProducer(bootstrap, linger_ms=2)
    t_start = float(int(time.time()))
    wall0 = time.time()
    late = 0
    cpu0 = time.process_time()
    for i in range(seconds):
        for s in range(10):  # each second's chunks spread over 10 slices, as live monitors send
            due = wall0 + i + s / 10
            if due > time.time():
                time.sleep(due - time.time())
            else:
                late += 1
            for j in range(s, streams, 10):
                seq = i + monitor_phase(j, stagger)
                value = frames.frame(names[j], seq, t_start + i, starts[j] + i)
                producer.send(topic, keys[j], value)
        producer.flush()
    producer.close()
    cpu = time.process_time() - cpu0
    print(
        json.dumps(
            {
                "publisher_late_slices": late,
                "publisher": producer.kind,
                "publisher_cpu_share": round(cpu / seconds, 3),
            }
        ),
        flush=True,
    )


def measure_capacity(
    bootstrap: str, model: Path, streams: int, seconds: int, tmp: Path, batch_size: int
) -> float:
    """Monitor-seconds per second one worker consumes from a backlog (the sustained maximum)."""
    from ecgstream.streaming.kafka import ensure_topics

    topic = f"cap-{uuid.uuid4().hex[:6]}"
    ensure_topics(bootstrap, [topic], 4)
    warm = warmup_seconds(model)
    steps = encoded_steps(model, streams, warm + seconds, float(int(time.time())) - 3 * seconds)
    publish_backlog(bootstrap, topic, steps)
    rate, _ = run_worker(
        bootstrap,
        topic,
        model,
        tmp,
        batch_size,
        total=streams * (warm + seconds),
        skip=streams * warm,
    )
    return rate


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", help="ONNX model (default: the shipped model, else a tiny test model)"
    )
    p.add_argument("--capacity", type=float, help="skip the capacity run: monitors per worker")
    p.add_argument(
        "--capacity-streams",
        type=int,
        default=5000,
        help="monitors in the capacity run; at least as many as the load run has, so that each "
        "poll, as under live load, holds about one chunk per monitor (default 5000)",
    )
    p.add_argument(
        "--capacity-seconds", type=int, default=20, help="seconds per monitor in the capacity run"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="windows per ONNX Runtime call (peak RSS grows with it: ~2.3 MB per MMAE window)",
    )
    p.add_argument("--fraction", type=float, default=0.8, help="load as a fraction of capacity")
    p.add_argument("--minutes", type=float, default=10.0, help="duration of the load run")
    p.add_argument(
        "--aligned",
        action="store_true",
        help="start every monitor at the same second (default: staggered over one hop)",
    )
    p.add_argument("--inline", action="store_true", help="worker with overlap_inference = false")
    p.add_argument(
        "--worker-cpus",
        default="0" if len(os.sched_getaffinity(0)) >= 2 else "all",
        help="CPUs of the worker under test, e.g. '0' or '0,1'; the broker and the publisher run "
        "on the others, as they would on their own machines ('all': no pinning; default '0')",
    )
    args, model = parse_args(p, publish_live)

    from ecgstream.runtime.model_file import read_spec
    from ecgstream.streaming.kafka import ensure_topics

    spec = read_spec(model)
    broker, bootstrap = start_broker()
    worker_cpus, other_cpus = pin_apart(args.worker_cpus, broker.pid)
    if args.inline:
        _workload.WORKER_OPTIONS["overlap_inference"] = False
    tmp = Path(tempfile.mkdtemp())
    result: dict = {
        "model": spec.name,
        "kind": spec.kind,
        "leads": spec.leads,
        "cpus": os.cpu_count(),
        "worker_cpus": sorted(worker_cpus) or "all",
    }
    try:
        if args.capacity:
            capacity = args.capacity
        else:
            capacity = measure_capacity(
                bootstrap, model, args.capacity_streams, args.capacity_seconds, tmp, args.batch_size
            )
            print(f"capacity: {capacity:.0f} monitor-seconds per second", flush=True)
        streams = int(args.fraction * capacity)
        seconds = int(args.minutes * 60)
        result.update(
            capacity=round(capacity, 1), streams=streams, seconds=seconds, fraction=args.fraction
        )
        if args.aligned:
            os.environ["ECGSTREAM_LOAD_ALIGNED"] = "1"  # read by the publisher process
        result["inline"] = args.inline
        result["aligned"] = args.aligned
        topic = f"load-{uuid.uuid4().hex[:6]}"
        ensure_topics(bootstrap, [topic], 4)
        worker = make_worker(bootstrap, topic, model, tmp, args.batch_size, latency=True)
        thread = threading.Thread(target=worker.run, kwargs={"max_s": seconds + 300}, daemon=True)
        thread.start()
        time.sleep(8)  # group join
        rss_start = rss_mb()
        pub = subprocess.Popen(
            [sys.executable, __file__, "--publish", bootstrap, topic, str(streams), str(seconds)]
            + ["--source", args.source]
            + (["--model", str(model)] if args.model else []),
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=on_cpus(other_cpus),
        )
        samples = []
        t0 = time.time()
        cpu_prev = (t0, cpu_seconds(), cpu_seconds(broker.pid))
        parts: list[np.ndarray] = []  # latencies, kept compact (float32) so they barely move RSS
        while pub.poll() is None:
            time.sleep(10)
            taken, worker.latencies = worker.latencies, []
            lat = np.asarray(taken, np.float32)
            parts.append(lat)
            cpu_now = (time.time(), cpu_seconds(), cpu_seconds(broker.pid))
            span = cpu_now[0] - cpu_prev[0]
            worker_cpu = (cpu_now[1] - cpu_prev[1]) / span
            broker_cpu = (cpu_now[2] - cpu_prev[2]) / span
            cpu_prev = cpu_now
            samples.append(
                {
                    "t_s": round(time.time() - t0, 1),
                    "rss_mb": round(rss_mb(), 1),
                    "lag_messages": worker.metrics.lag._value.get(),
                    "messages": worker.summary.messages,
                    "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 1) if len(lat) else None,
                    "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 1) if len(lat) else None,
                    "over_target": int((lat > TARGET_S).sum()),
                    "worker_cores": round(worker_cpu, 2),
                    "broker_cores": round(broker_cpu, 2),
                    "loadavg": os.getloadavg()[0],
                }
            )
            print(json.dumps(samples[-1]), flush=True)
        pub_out = pub.stdout.read()
        time.sleep(5)
        worker.stop()
        thread.join(60)
        lat = np.concatenate(parts + [np.asarray(worker.latencies, np.float32)])
        steady = samples[len(samples) // 10 :]  # the first minute is warm-up
        lags = [s["lag_messages"] for s in steady]
        result.update(
            rss_mb_start=round(rss_start, 1),
            rss_mb_end=round(samples[-1]["rss_mb"], 1) if samples else None,
            lag_max=max(lags) if lags else None,
            lag_first_half_mean=float(np.mean(lags[: len(lags) // 2])) if lags else None,
            lag_second_half_mean=float(np.mean(lags[len(lags) // 2 :])) if lags else None,
            messages=int(worker.summary.messages),
            expected_messages=streams * seconds,
            windows=int(worker.summary.windows),
            alerts=int(sum(worker.summary.alerts.values())),
            latency_p50_ms=round(float(np.percentile(lat, 50)) * 1000, 1),
            latency_p99_ms=round(float(np.percentile(lat, 99)) * 1000, 1),
            latency_max_ms=round(float(lat.max()) * 1000, 1),
            over_target=int((lat > TARGET_S).sum()),
            over_target_share=float((lat > TARGET_S).mean()),
            publisher=pub_out.strip(),
            samples=samples,
            loadavg_end=os.getloadavg()[0],
        )
    finally:
        broker.kill()
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
