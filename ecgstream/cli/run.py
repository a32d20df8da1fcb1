"""``ecgstream run``: the streaming worker (Kafka), or the embedded default with ``--replay``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ecgstream.cli.options import add_kafka_flags, config_flags

HELP = """\
Score live ECG streams and deliver alerts.

With --replay (no broker, one process): replays WFDB records through the same pipeline the
Kafka worker runs and prints alerts as JSON lines, then a summary. Without a PATH it plays the
bundled excerpt of real MIT-BIH ECG through the shipped model. Finishes in seconds.

Without --replay: joins the consumer group GROUP on TOPIC at BOOTSTRAP, windows every stream,
scores the windows of each poll in one ONNX Runtime call, writes alerts durably (SQLite outbox,
alerts topic, JSON lines), then commits offsets. Malformed messages go to the dead-letter topic.
Stops cleanly on SIGTERM or Ctrl-C (finishes the batch in flight, commits, closes).

Settings come from defaults < --config FILE [run] table < ECGSTREAM_RUN__<KEY> environment
variables < flags (docs/operations.md lists every key).

examples:
  ecgstream run --replay
  ecgstream run --replay ../shared/data/mitdb-ds1/208 --model models/consensus-mitdb-mlii.onnx
  ecgstream run --bootstrap localhost:9092 --topic ecg.raw --group ecgstream \\
      --webhook http://localhost:8080/alerts --webhook-secret whsec_... --metrics-port 9108
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="the streaming worker (Kafka, or --replay with no broker)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--replay",
        nargs="*",
        metavar="PATH",
        default=None,
        help="run in-process on these records/folders (none: the bundled excerpt), no broker",
    )
    p.add_argument("--config", type=Path, help="TOML file with a [run] table")
    p.add_argument("--model", help="exported .onnx model (default: the shipped model)")
    add_kafka_flags(p, topic_help="raw chunk topic (default ecg.raw)")
    p.add_argument("--group", help="consumer group (default ecgstream)")
    p.add_argument("--dlq-topic", help="dead-letter topic (default ecg.raw.dlq)")
    p.add_argument("--alerts-topic", help="also publish alerts to this topic")
    p.add_argument(
        "--webhook",
        dest="webhook_urls",
        action="append",
        metavar="URL",
        help="webhook endpoint (repeatable)",
    )
    p.add_argument(
        "--webhook-secret", help="whsec_... signing secret (better: ECGSTREAM_RUN__WEBHOOK_SECRET)"
    )
    p.add_argument("--outbox", help="SQLite outbox file (default ecgstream-outbox.sqlite)")
    p.add_argument("--alerts-out", help="alerts as JSON lines to this file ('-' stdout, '' off)")
    p.add_argument("--scores-out", help="per-window scores as JSON lines to this file")
    p.add_argument(
        "--metrics-port", type=int, help="serve Prometheus /metrics and /healthz on this port"
    )
    p.add_argument(
        "--metrics-addr",
        help="address the metrics port binds to (default 127.0.0.1; 0.0.0.0 for all interfaces)",
    )
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default 1)")
    p.add_argument(
        "--threshold", type=float, help="alert threshold, calibrated units (default: the model's)"
    )
    p.add_argument(
        "--min-windows", type=int, help="consecutive windows above threshold to alert (default 2)"
    )
    p.add_argument(
        "--cooldown-s", type=float, help="quiet seconds after an alert closes (default 10)"
    )
    p.add_argument(
        "--sustain-s",
        type=float,
        help="seconds above threshold before an open alert escalates to critical (default 30; 0 never)",
    )
    p.add_argument(
        "--update-s",
        type=float,
        help="at most one 'updated' message (new spans) per alert every this many seconds (default 10)",
    )
    p.add_argument(
        "--no-rhythm",
        dest="rhythm",
        action="store_false",
        default=None,
        help="no rhythm alerts (irregular rhythm, tachycardia, bradycardia, pause)",
    )
    p.add_argument(
        "--adaptive",
        action="store_true",
        default=None,
        help="per-stream adaptive threshold (river)",
    )
    p.add_argument(
        "--drift",
        action="store_true",
        default=None,
        help="ADWIN drift alerts on score streams (river)",
    )
    p.add_argument(
        "--speed", type=float, default=0.0, help="--replay pace: 1 = real time, 0 = fast (default)"
    )
    p.add_argument("--copies", type=int, default=1, help="--replay: streams per record (default 1)")
    p.add_argument(
        "--t0",
        type=float,
        help="--replay: stream start, s since the epoch (default: now); fixes alert ids",
    )
    p.add_argument("--max-idle-s", type=float, help="stop after this many seconds without messages")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ecgstream.config import RunConfig, load

    cfg = load(RunConfig, "run", args.config, config_flags(args, RunConfig))
    if args.replay is not None:
        return _run_local(cfg, args)
    from ecgstream.streaming.worker import Worker

    worker = Worker(cfg)
    worker.install_signal_handlers()
    print(
        f"ecgstream run: model {worker.scorer.spec.name} {worker.scorer.spec.version}; "
        f"consuming {cfg.topic} at {cfg.bootstrap} as group {cfg.group}",
        file=sys.stderr,
    )
    summary = worker.run(max_idle_s=args.max_idle_s)
    print(summary.text(), file=sys.stderr)
    return 130 if worker.interrupted else 0


def _describe(alert: dict, t_start: float = 0.0) -> None:
    """One readable line per alert message on stderr (stdout carries the JSON lines); times are
    positions in the record (seconds from the stream start ``t_start``)."""
    t0, t1 = alert["start_s"] - t_start, alert["end_s"] - t_start
    if alert["kind"] == "anomaly":
        what = f"score {alert['score']:.2f} (threshold {alert['threshold']:.2f})"
        if alert.get("status") != "firing":
            what += f"; {alert['detail']}"
    else:
        what = alert["detail"]
    print(
        f"  {alert.get('status', 'firing'):>9} {alert['severity']:>8} {alert['kind']:<16} "
        f"stream {alert['stream']:<8} {t0:7.1f}-{t1:7.1f} s  {what}",
        file=sys.stderr,
    )


def _near_misses(pipeline, t_start: float) -> None:
    """Streams that went above the warning threshold without alerting, and why."""
    for name, st in pipeline.streams.items():
        m = st.anomaly
        for start, n in m.near_misses:
            print(
                f"  stream {name}: above warning at {start - t_start:.0f} s for {n} window"
                f"{'s' if n > 1 else ''}, needs {m.cfg.min_windows} in a row: no alert",
                file=sys.stderr,
            )


def _run_local(cfg, args: argparse.Namespace) -> int:
    from ecgstream.runtime.scorer import Scorer
    from ecgstream.sinks.jsonl import JsonLinesSink
    from ecgstream.sinks.outbox import Outbox
    from ecgstream.sinks.router import AlertRouter
    from ecgstream.streaming.local import run_local
    from ecgstream.streaming.pipeline import Pipeline
    from ecgstream.streaming.replay import bundled_records, plan_streams, start_time
    from ecgstream.streaming.security import webhook_secret
    from ecgstream.streaming.worker import alert_config, find_model, technical_config

    paths = args.replay or bundled_records()
    model = find_model(cfg.model)
    scorer = Scorer(model, threads=cfg.threads, batch_size=cfg.batch_size)
    spec = scorer.spec
    streams = plan_streams(paths, copies=args.copies)
    print(
        f"ecgstream run: replaying {len(streams)} stream(s), {sum(s.record.duration_s for s in streams):.0f} s "
        f"of ECG, through {spec.name} {spec.version} ({spec.kind}; leads {','.join(spec.leads)}; "
        f"{spec.window_s:g} s windows every {spec.hop_s:g} s; threshold "
        f"{cfg.threshold if cfg.threshold is not None else spec.threshold:.2f}); no broker",
        file=sys.stderr,
    )
    # window scores are kept for the summary's per-stream peaks (and --scores-out)
    pipeline = Pipeline(scorer, alert_config(cfg), technical_config(cfg), keep_scores=True)
    router = AlertRouter(
        outbox=Outbox(cfg.outbox) if cfg.webhook_urls else None,
        webhook_urls=cfg.webhook_urls,
        webhook_secret=webhook_secret(cfg).reveal(),
        jsonl=JsonLinesSink(cfg.alerts_out) if cfg.alerts_out else None,
    )
    scores = JsonLinesSink(cfg.scores_out) if cfg.scores_out else None
    t_start = start_time() if args.t0 is None else args.t0
    try:
        summary = run_local(
            pipeline,
            streams,
            router,
            scores,
            speed=args.speed,
            t_start=t_start,
            progress=not args.no_progress,
            on_alert=lambda alert: _describe(alert, t_start),
        )
    finally:
        router.close()
        if scores is not None:
            scores.close()
    _near_misses(pipeline, t_start)
    print("\nsummary\n" + summary.text(), file=sys.stderr)
    return 0
