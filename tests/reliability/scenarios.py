"""Long-running fault scenarios shared by the tests (short faults) and benchmarks (full length).

Each scenario drives real processes (``ecgstream run`` and ``ecgstream replay`` via
``python -m ecgstream``, a Tansu broker, HTTP receivers) and returns a dict of what it observed;
the tests assert on it and ``benchmarks/reliability_*.py`` write it to JSON and the docs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from conftest import synthetic_ecg, write_record
from prometheus_client.parser import text_string_to_metric_families
from streaming.conftest import free_port
from streaming.helpers import read_scores, wait_until

from .broker import S3Store, TansuBroker

__all__ = ["broker_outage", "scrape", "run_cli", "read_scores"]


def run_cli(args: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m ecgstream ARGS`` with output to ``log_path``."""
    log = open(log_path, "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecgstream", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    log.close()
    return proc


def scrape(port: int) -> dict[str, float]:
    """Unlabelled samples (and labelled ones as ``name{k=v}``) from a worker's /metrics."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + (
                "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
                if s.labels
                else ""
            )
            out[key] = s.value
    return out


def broker_outage(
    workdir: Path,
    model: Path,
    outage_s: float,
    before_s: float = 6.0,
    after_s: float = 8.0,
    n_streams: int = 4,
    s3: S3Store | None = None,
) -> dict:
    """Kill the broker ``outage_s`` seconds while a worker consumes and a replay publishes.

    With ``s3`` the broker keeps its log and committed offsets there and comes back with them,
    as a Kafka cluster does; without it Tansu keeps everything in memory and comes back empty
    (topics recreated on first use, the group starting over from the earliest offset). The
    replay (``ecgstream replay --speed 1``) keeps publishing throughout; chunks sent while the
    broker is down wait in the producer and are delivered once it is back.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    seconds = int(before_s + outage_s + after_s)
    folder = workdir / "records"
    for i in range(n_streams):
        write_record(
            folder,
            f"b{i}",
            synthetic_ecg(seconds, 360, heart_rate=62 + 6 * i, seed=80 + i),
            360,
            ["MLII"],
        )
    broker = TansuBroker(workdir, s3=s3).start()
    topic = f"outage-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    port = free_port()
    common = ["--bootstrap", broker.bootstrap, "--topic", topic]
    worker = run_cli(
        [
            "-v",
            "run",
            *common,
            "--group",
            group,
            "--model",
            str(model),
            "--outbox",
            str(workdir / "o.sqlite"),
            "--alerts-out",
            "",
            "--scores-out",
            str(workdir / "scores.jsonl"),
            "--metrics-port",
            str(port),
        ],
        workdir / "worker.log",
    )
    replay = None
    res: dict = {
        "outage_s": outage_s,
        "streams": n_streams,
        "seconds": seconds,
        "storage": broker.storage.split(":")[0],
    }
    try:
        if not wait_until(lambda: "assigned" in (workdir / "worker.log").read_text(), 40):
            raise RuntimeError(
                "worker did not join: " + (workdir / "worker.log").read_text()[-2000:]
            )
        t_replay = time.time()
        replay = run_cli(
            ["replay", str(folder), *common, "--partitions", "2", "--speed", "1", "--no-progress"],
            workdir / "replay.log",
        )
        time.sleep(before_s)
        res["metrics_before"] = scrape(port)
        res["windows_before"] = len(read_scores(workdir / "scores.jsonl"))
        res["committed_before"] = broker.committed(group)
        broker.stop()  # SIGKILL
        t_down = time.time()
        wait_until(lambda: scrape(port).get("ecgstream_broker_up") == 0, min(outage_s, 10))
        res["metrics_during"] = scrape(port)
        time.sleep(max(0.0, outage_s - (time.time() - t_down)))
        res["worker_alive_during_outage"] = worker.poll() is None
        broker.start()
        t_up = time.time()
        res["committed_after_restart"] = broker.committed(group)
        res["replay_exit"] = replay.wait(seconds + 180)

        def last_windows_scored():  # every stream's last window (the consumer group rejoins first)
            scores = read_scores(workdir / "scores.jsonl")
            t_last = max((s["start_s"] for s in scores), default=0.0)
            return len({s["stream"] for s in scores if s["start_s"] >= t_last - 0.5}) == n_streams

        wait_until(last_windows_scored, 120, step=1.0)
        time.sleep(2.0)
        res["recovered_after_s"] = round(time.time() - t_up, 1)
        res["metrics_after"] = scrape(port)
        worker.send_signal(signal.SIGTERM)
        res["worker_exit"] = worker.wait(60)
    finally:
        for p in (worker, replay):
            if p is not None and p.poll() is None:
                p.kill()
        broker.stop()
    log = (workdir / "worker.log").read_text()
    res["log_outage"] = [m.group(0) for m in re.finditer(r"ecgstream[.\w]*: broker [^\n]*", log)]
    res["log_reread"] = [ln for ln in log.splitlines() if "topic recreated" in ln]
    scores = read_scores(workdir / "scores.jsonl")
    res["windows_scored"] = len({(s["stream"], s["window"]) for s in scores})
    res["windows_rescored"] = len(scores) - res["windows_scored"]
    # stream time = wall time of publication (real-time replay starting at a whole second)
    t0 = float(min((round(s["start_s"]) for s in scores), default=int(t_replay)))
    res["t_down_s"], res["t_up_s"] = round(t_down - t0, 2), round(t_up - t0, 2)
    starts = {(s["stream"], round(s["start_s"] - t0)) for s in scores}
    expected = {(f"b{i}", j) for i in range(n_streams) for j in range(seconds - 1)}
    lost = sorted(expected - starts)
    res["windows_expected"] = len(expected)
    res["windows_lost"] = len(lost)
    res["lost_window_starts_s"] = sorted({j for _, j in lost})
    # windows whose chunks were all published at least 2 s after the broker came back
    res["after_restart_missing"] = sorted({j for _, j in lost if j >= t_up - t0 + 4})
    rlog = (workdir / "replay.log").read_text()
    res["replay_undelivered"] = [ln for ln in rlog.splitlines() if "not delivered" in ln]
    return res


def webhook_outage(
    workdir: Path, model: Path, outage_s: float, n_streams: int = 6, slow_s: float = 3.0
) -> dict:
    """The webhook receiver fails for ``outage_s`` (500s, timeouts, refused, slow), then recovers.

    A worker consumes a real-time replay whose streams carry a noise burst every 8 s (so alerts
    keep coming during the outage); halfway through the outage the worker is SIGKILLed and a new
    one starts on the same outbox. Reported: alerts stored, alerts delivered after recovery, the
    time from recovery to the last delivery, requests made and retry gaps.
    """
    import sqlite3

    import numpy as np
    from streaming.helpers import burst

    from ecgstream.sinks.webhook import new_secret

    from .receivers import FlakyReceiver

    workdir.mkdir(parents=True, exist_ok=True)
    seconds = int(outage_s + 15)
    folder = workdir / "records"
    for i in range(n_streams):
        sig = synthetic_ecg(seconds, 360, heart_rate=60 + 5 * i, seed=90 + i)
        for at in np.arange(3.0 + i, seconds - 3, 8.0):
            sig = burst(sig, 360, float(at), 1.5)
        write_record(folder, f"h{i}", sig, 360, ["MLII"])
    broker = TansuBroker(workdir).start()
    topic = f"hook-{uuid.uuid4().hex[:8]}"
    secret = new_secret()
    rx = FlakyReceiver(secret, mode="error", slow_s=slow_s, hold_s=8.0)
    outbox = workdir / "outbox.sqlite"
    common = ["--bootstrap", broker.bootstrap, "--topic", topic]

    def worker(name):
        return run_cli(
            [
                "-v",
                "run",
                *common,
                "--group",
                f"g-{topic}",
                "--model",
                str(model),
                "--outbox",
                str(outbox),
                "--webhook",
                rx.url,
                "--alerts-out",
                "",
                "--min-windows",
                "1",
                "--cooldown-s",
                "2",
            ],
            workdir / f"{name}.log",
            env={"ECGSTREAM_RUN__WEBHOOK_SECRET": secret},
        )

    res: dict = {
        "outage_s": outage_s,
        "streams": n_streams,
        "modes": ["error", "timeout", "refused", "slow"],
    }
    procs = [worker("a")]
    replay = None
    try:
        if not wait_until(lambda: "assigned" in (workdir / "a.log").read_text(), 40):
            raise RuntimeError((workdir / "a.log").read_text()[-2000:])
        replay = run_cli(
            ["replay", str(folder), *common, "--partitions", "2", "--speed", "1", "--no-progress"],
            workdir / "replay.log",
        )
        t_start = time.time()
        quarter = outage_s / 4
        for q, mode in enumerate(res["modes"]):
            rx.set_mode(mode)
            if q == 2:  # halfway: the worker dies with undelivered alerts in its outbox
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait(10)
                procs.append(worker("b"))
            time.sleep(max(0.0, t_start + (q + 1) * quarter - time.time()))
        rx.set_mode("ok")
        t_back = time.time()
        res["replay_exit"] = replay.wait(120)
        time.sleep(3)  # the last chunks' alerts reach the outbox

        def stored_ids():
            db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=5)
            try:
                return {r[0] for r in db.execute("SELECT id FROM alerts")}
            finally:
                db.close()

        ok = wait_until(lambda: stored_ids() <= rx.delivered(), 600, step=0.5)
        res["all_delivered"] = ok
        delivered_at = {}
        with rx.lock:
            for t, i, m, good in rx.requests:
                if m in ("ok", "slow") and good and i not in delivered_at:
                    delivered_at[i] = t
        ids = stored_ids()
        db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=5)
        created = dict(db.execute("SELECT id, created FROM alerts").fetchall())
        db.close()
        res["alerts_stored"] = len(ids)
        res["alerts_stored_during_outage"] = sum(1 for i in ids if created[i] < t_back)
        res["alerts_delivered"] = len(ids & rx.delivered())
        res["delivered_during_outage_slow"] = sum(
            1 for i in ids if delivered_at.get(i, 1e18) < t_back
        )
        # for alerts stored during the outage and not delivered by a slow answer: recovery delay
        late = [
            delivered_at[i] - t_back
            for i in ids
            if created[i] < t_back and delivered_at.get(i, 0) >= t_back
        ]
        res["last_delivery_after_recovery_s"] = round(max(late), 1) if late else 0.0
        res["median_delivery_after_recovery_s"] = round(float(np.median(late)), 1) if late else 0.0
        procs[-1].send_signal(signal.SIGTERM)
        res["worker_exit"] = procs[-1].wait(60)
    finally:
        for p in [*procs, replay]:
            if p is not None and p.poll() is None:
                p.kill()
        rx.close()
        broker.stop()
    db = sqlite3.connect(str(outbox))
    res["outbox"] = dict(
        db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()
    )
    res["attempts_max"] = db.execute("SELECT MAX(attempts) FROM deliveries").fetchone()[0]
    res["attempts_total"] = db.execute("SELECT SUM(attempts) FROM deliveries").fetchone()[0]
    db.close()
    res["requests_at_receiver"] = len(rx.requests)
    res["requests_by_mode"] = {
        m: sum(1 for r in rx.requests if r[2] == m) for m in (*res["modes"], "ok")
    }
    res["duplicate_deliveries"] = sum(1 for r in rx.requests if r[2] in ("ok", "slow")) - len(
        rx.delivered()
    )
    gaps = []
    for i in {r[1] for r in rx.requests}:
        ts = rx.attempts(i)
        if len(ts) >= 4:
            gaps.append(np.diff(ts).round(1).tolist())
    res["retry_gaps_example_s"] = max(gaps, key=len) if gaps else []
    return res
