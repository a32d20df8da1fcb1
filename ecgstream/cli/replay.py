"""``ecgstream replay``: publish WFDB records to Kafka as live streams."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ecgstream.cli.options import add_kafka_flags, config_flags

HELP = """\
Publish WFDB records to a Kafka topic as live ECG streams, in the wire format the worker reads
(docs/wire-format.md).

Every record (times --copies) becomes one stream, keyed by its stream id, cut into chunks of
--chunk-s seconds, and all streams are interleaved as live monitors would send them, at real
time (--speed 1), faster (--speed 10) or as fast as possible (--speed 0). Stream time starts at
the current whole second. PATH is a record path without extension, a .hea file or a folder.

examples:
  ecgstream replay ../shared/data/mitdb-ds1 --bootstrap localhost:9092 --topic ecg.raw
  ecgstream replay data/208 --copies 100 --speed 0 --limit-s 60 --encoding json
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="publish WFDB records to Kafka as live streams",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths", nargs="*", metavar="PATH", help="records or folders (default: the bundled excerpt)"
    )
    p.add_argument("--config", type=Path, help="TOML file with a [replay] table")
    add_kafka_flags(p, topic_help="topic to publish to (default ecg.raw)")
    p.add_argument("--partitions", type=int, help="partitions if the topic is created (default 4)")
    p.add_argument("--chunk-s", type=float, help="seconds per message (default 1)")
    p.add_argument("--speed", type=float, help="1 = real time (default), 0 = as fast as possible")
    p.add_argument("--copies", type=int, help="streams per record (default 1)")
    p.add_argument("--encoding", choices=["binary", "json"], help="wire encoding (default binary)")
    p.add_argument(
        "--sample-type", choices=["int16", "float32"], help="binary sample type (default int16)"
    )
    p.add_argument("--limit-s", type=float, help="replay at most this many seconds of each record")
    p.add_argument(
        "--loop", action="store_true", default=None, help="start over at the end, until Ctrl-C"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ecgstream.config import ReplayConfig, load
    from ecgstream.streaming.kafka import ensure_topics, make_producer, wait_for_broker
    from ecgstream.streaming.replay import bundled_records, plan_streams, publish, start_time
    from ecgstream.streaming.security import kafka_options

    cfg = load(ReplayConfig, "replay", args.config, config_flags(args, ReplayConfig))
    streams = plan_streams(args.paths or bundled_records(), copies=cfg.copies, limit_s=cfg.limit_s)
    security = kafka_options(cfg)  # TLS / SASL settings from [replay], {} for PLAINTEXT
    wait_for_broker(cfg.bootstrap, **security)
    ensure_topics(cfg.bootstrap, [cfg.topic], cfg.partitions, **security)
    producer = make_producer(cfg.bootstrap, client_id="ecgstream-replay", **security)
    steps, t0 = 0, start_time()
    interrupted = False
    try:
        while True:
            n = publish(
                producer,
                cfg.topic,
                streams,
                cfg.chunk_s,
                cfg.speed,
                cfg.encoding,
                cfg.sample_type,
                t_start=t0 + steps * cfg.chunk_s,
                progress=not args.no_progress,
                seq0=steps,
            )
            steps += n
            if not cfg.loop or n == 0:
                break
    except KeyboardInterrupt:  # what was sent is flushed; the line saying so came first
        interrupted = True
    finally:
        producer.flush()
        producer.close()
    print(
        f"ecgstream replay: {steps * cfg.chunk_s:g} s of {len(streams)} stream(s) sent to {cfg.topic}",
        file=sys.stderr,
    )
    return 130 if interrupted else 0
