"""The Kafka worker of ``ecgstream run``: poll, decode, score, make alerts durable, commit.

One loop iteration handles one poll (up to ``max_poll_records`` messages from all assigned
partitions): malformed messages go to the dead-letter topic, the rest go through one
:class:`~ecgstream.streaming.pipeline.Pipeline` batch (one ONNX Runtime call for the windows of
every stream), alerts are written to every sink durably, and only then offsets are committed.
See docs/delivery.md for the commit order, revocation and back-pressure.

The inference call of a batch runs in a second thread (ONNX Runtime releases the GIL) while the
loop polls and prepares the next batch (with ``inference_depth`` N, up to N calls run at once,
each in its own thread; ``catchup_inference_depth`` while the records polled are older than
``catchup_after_s``, a backlog); batches still complete, become durable and commit one at a
time in poll order, and every batch in flight is completed before a rebalance, an eviction or
close.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ecgstream.alerts.state import AlertConfig
from ecgstream.alerts.technical import TechnicalConfig
from ecgstream.config import ConfigError, RunConfig
from ecgstream.runtime.scorer import Scorer
from ecgstream.sinks.jsonl import JsonLinesSink
from ecgstream.sinks.kafka_topic import AlertsTopicSink
from ecgstream.sinks.outbox import Outbox
from ecgstream.sinks.router import AlertRouter
from ecgstream.streaming.kafka import (
    check_reachable,
    dlq_headers,
    ensure_topics,
    make_consumer,
    make_producer,
)
from ecgstream.streaming.metrics import Metrics
from ecgstream.streaming.pipeline import Incoming, Pipeline, Prepared
from ecgstream.streaming.security import kafka_options, webhook_secret
from ecgstream.streaming.wire import WireError, decode

__all__ = ["Worker", "Summary", "find_model", "alert_config", "technical_config"]

log = logging.getLogger(__name__)

SHIPPED_MODEL = "consensus-mitdb-mlii.onnx"
#: a worker whose loop has not come round for this long (s) is not consuming (``/healthz``)
HEALTH_STALL_S = 30.0
#: webhook drain at close (s): SIGTERM (an orchestrator's stop) and Ctrl-C (someone waiting)
DRAIN_S = 5.0
INTERRUPT_DRAIN_S = 0.5
#: after Ctrl-C the process exits within this many seconds (s), closed or not
INTERRUPT_EXIT_S = 4.0


def find_model(path: str | Path | None = None) -> Path:
    """The model to serve: ``path`` if given, else the shipped model next to the package."""
    if path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"model file {p} not found")
        return p
    import ecgstream

    here = Path(ecgstream.__file__).resolve().parent
    # ecgstream/_models: the repository's models/ (a link in a checkout, a copy in a wheel)
    for candidate in (here / "_models" / SHIPPED_MODEL, here.parent / "models" / SHIPPED_MODEL):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"the shipped model {SHIPPED_MODEL} was not found in {here / '_models'} (the package was"
        " installed without its models); pass --model PATH"
    )


def alert_config(cfg: RunConfig) -> AlertConfig:
    """The alert policy of ``[run]`` (anomaly and rhythm alerts)."""
    return cfg.alert_policy()


def technical_config(cfg: RunConfig) -> TechnicalConfig:
    return TechnicalConfig(
        flat_ptp=cfg.flat_ptp, saturation_level=cfg.saturation_level, enabled=cfg.technical
    )


@dataclass
class Summary:
    """Totals of a run, printed at the end."""

    messages: int = 0
    dlq: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)  # reason -> records not even dead-lettered
    windows: int = 0
    suppressed: int = 0
    alerts: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)
    streams: set = field(default_factory=set)
    seconds: float = 0.0
    peaks: dict = field(default_factory=dict)  # stream -> (highest window score, its start s)
    threshold: float | None = None
    #: epoch seconds of every stream's first sample (a replay of records): peaks are then shown
    #: as positions in the record instead of clock times
    t_origin: float | None = None

    def add_peaks(self, scores: list[dict]) -> None:
        """Remember each stream's highest window score (for the end-of-run summary)."""
        for s in scores:
            best = self.peaks.get(s["stream"])
            if best is None or s["score"] > best[0]:
                self.peaks[s["stream"]] = (s["score"], s["start_s"])

    def add(self, res, n_messages: int) -> None:
        self.messages += n_messages
        self.windows += res.windows
        self.suppressed += res.suppressed
        self.events.update(res.events)
        for a in res.alerts:
            self.alerts[a.kind] += 1

    def text(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.alerts.items())) or "none"
        lines = [
            f"streams: {len(self.streams)}   messages: {self.messages}   "
            f"windows scored: {self.windows}   suppressed (technical): {self.suppressed}",
            f"alerts: {sum(self.alerts.values())} ({kinds})",
        ]
        if self.dlq:
            lines.append(
                "dead-lettered: " + ", ".join(f"{k} {v}" for k, v in sorted(self.dlq.items()))
            )
        if self.skipped:
            lines.append(
                "skipped (dead-letter topic refused them): "
                + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
            )
        if self.events:
            lines.append(
                "stream events: " + ", ".join(f"{k} {v}" for k, v in sorted(self.events.items()))
            )
        if self.peaks:
            shown = sorted(self.peaks.items(), key=lambda kv: -kv[1][0])[:10]
            thr = f" (alert threshold {self.threshold:.2f})" if self.threshold is not None else ""
            lines.append(f"highest window score per stream{thr}:")
            lines.extend(
                f"  {name:<12} {score:8.2f}  {self._when(t)}" for name, (score, t) in shown
            )
        lines.append(f"time: {self.seconds:.1f} s")
        return "\n".join(lines)

    def _when(self, t: float) -> str:
        """A window's start: seconds into the record in a replay, else the UTC clock time."""
        if self.t_origin is not None:
            return f"window at {t - self.t_origin:.1f} s of the record"
        return f"window at {time.strftime('%H:%M:%S', time.gmtime(t))} UTC"


@dataclass
class _Staged:
    """A poll decoded and cut into windows, its inference call submitted."""

    polled: dict
    items: list[Incoming]
    dead: list[tuple]
    stamps: list[int]
    n: int
    prep: Prepared
    inference: Future
    commit_to: dict[int, int] | None  # partition -> offset to commit once this batch is durable
    t0: float


class Worker:
    """A consumer-group member scoring the ``cfg.topic`` streams (see the module docstring).

    ``record_latency`` keeps, per message, the seconds from its publication (Kafka timestamp)
    to its alerts being durable, in :attr:`latencies` (benchmarks).
    """

    def __init__(
        self,
        cfg: RunConfig,
        scorer: Scorer | None = None,
        metrics: Metrics | None = None,
        record_latency: bool = False,
    ):
        self.cfg = cfg
        self.scorer = scorer or Scorer(
            find_model(cfg.model), threads=cfg.threads, batch_size=cfg.batch_size
        )
        self.metrics = metrics or Metrics()
        self.pipeline = Pipeline(
            self.scorer, alert_config(cfg), technical_config(cfg), keep_scores=bool(cfg.scores_out)
        )
        self.summary = Summary()
        self.record_latency = record_latency
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._committed: dict[int, int] = {}
        self._commit_t = float("-inf")  # monotonic time of the last batch that set commit targets
        self._last: dict[int, int] = {}  # partition -> last offset processed
        self._broker_checked = 0.0  # broker reachability (see _check_broker)
        self._no_conn_since: float | None = None
        self._outage_since: float | None = None
        self._to_rewind: set = set()  # newly assigned partitions to seek to their committed offset
        self._broker_up = False  # the consumer has a broker connection (see _check_broker)
        self.interrupted = False  # stopped by Ctrl-C (see interrupt)
        self._drain_s = DRAIN_S
        self._loop_t: float | None = None  # monotonic time the run loop last came round
        self._n_assigned = 0
        for name in ("inference_depth", "catchup_inference_depth"):
            if getattr(cfg, name) < 1:
                raise ConfigError(f"run.{name} must be at least 1, got {getattr(cfg, name)}")
        if not cfg.catchup_after_s > 0:
            raise ConfigError(f"run.catchup_after_s must be positive, got {cfg.catchup_after_s}")
        self._catching_up = False  # the last poll's oldest record is over catchup_after_s old
        self._inflight: deque[_Staged] = deque()  # staged batches, oldest first
        self._infer_pool: ThreadPoolExecutor | None = None
        self.consumer = None
        self.producer = None
        self.router: AlertRouter | None = None
        self.scores_sink: JsonLinesSink | None = None

    # ---------------------------------------------------------------- lifecycle

    def stop(self, *_args) -> None:
        """Ask the loop to finish the batch in flight, commit and close (signal-safe)."""
        self._stop.set()

    def interrupt(self, *_args) -> None:
        """Ctrl-C: stop as :meth:`stop` does, with a short webhook drain (what is not sent
        stays in the outbox); a second Ctrl-C exits at once (at-least-once covers it)."""
        import os
        import sys

        if self._stop.is_set():
            os._exit(130)
        # whatever the close waits for (a broker gone quiet), the process ends promptly
        watchdog = threading.Timer(INTERRUPT_EXIT_S, os._exit, args=(130,))
        watchdog.daemon = True
        watchdog.start()
        self.interrupted = True
        self._drain_s = INTERRUPT_DRAIN_S
        print(
            "ecgstream run: interrupted: finishing the batch in flight, committing, closing "
            "(Ctrl-C again to quit at once)",
            file=sys.stderr,
        )
        self._stop.set()

    def health(self) -> tuple[bool, dict]:
        """Whether the worker is consuming (its loop came round in the last
        :data:`HEALTH_STALL_S` seconds, not stopping) with a broker connection, and details
        (``GET /healthz``; called from the metrics thread)."""
        loop_t = self._loop_t
        age = None if loop_t is None else time.monotonic() - loop_t
        consuming = (
            self.consumer is not None
            and not self._stop.is_set()
            and age is not None
            and age < HEALTH_STALL_S
        )
        ok = consuming and self._broker_up
        return ok, {
            "status": "ok" if ok else "unavailable",
            "consuming": consuming,
            "broker_up": self._broker_up,
            "assigned_partitions": self._n_assigned,
            "last_loop_s": None if age is None else round(age, 3),
        }

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.interrupt)

    def _open(self) -> None:
        cfg = self.cfg
        security = kafka_options(cfg)  # TLS / SASL settings, {} for PLAINTEXT
        secret = webhook_secret(cfg).reveal()
        # one clear error for a wrong address, instead of kafka-python's retries and tracebacks
        check_reachable(cfg.bootstrap, cfg.connect_timeout_s, self._stop)
        if cfg.create_topics:
            topics = [cfg.topic, cfg.dlq_topic, cfg.alerts_topic]
            ensure_topics(cfg.bootstrap, topics, cfg.partitions, **security)
        self.producer = make_producer(cfg.bootstrap, client_id=f"ecgstream-{cfg.group}", **security)
        outbox = Outbox(cfg.outbox) if cfg.outbox else None
        self.router = AlertRouter(
            outbox=outbox,
            webhook_urls=cfg.webhook_urls,
            webhook_secret=secret,
            jsonl=JsonLinesSink(cfg.alerts_out) if cfg.alerts_out else None,
            topic=AlertsTopicSink(self.producer, cfg.alerts_topic) if cfg.alerts_topic else None,
            on_webhook_result=lambda status: self.metrics.webhooks.labels(status).inc(),
        )
        self.scores_sink = JsonLinesSink(cfg.scores_out) if cfg.scores_out else None
        from kafka import AsyncConsumerRebalanceListener

        worker = self

        # The consumer runs these on its network thread, where a blocking commit cannot wait
        # for its own reply: the revocation commit is awaited instead.
        class Listener(AsyncConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                await worker._on_revoked({tp.partition for tp in revoked})

            async def on_partitions_assigned(self, assigned):
                worker._on_assigned(assigned)

        self.consumer = make_consumer(
            cfg.bootstrap,
            cfg.group,
            client_id=f"ecgstream-{cfg.group}",
            max_poll_records=cfg.max_poll_records,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            **security,
        )
        self.consumer.subscribe([cfg.topic], listener=Listener())
        if cfg.metrics_port:
            self.metrics.serve(cfg.metrics_port, cfg.metrics_addr, health=self.health)

    async def _on_revoked(self, partitions: set[int]) -> None:
        # Offsets are committed once the batch in flight is durable; what follows the commit is
        # re-read by the partition's next owner, so the state of these streams is simply dropped.
        # A batch's own commit would block this thread: the one commit below covers it.
        self._finish_inflight(commit=False)
        # what is durable, before the next owner reads from the committed offset
        offsets = self._commit_offsets(self._commit_targets())
        if offsets:
            from kafka.errors import KafkaError

            try:
                await self.consumer.commit_async(offsets)
            except KafkaError as exc:  # the next owner re-reads from the last commit
                self._commit_failed(exc, " on revocation")
            else:
                self._committed_to(offsets)
        dropped = self.pipeline.drop_partitions(partitions)
        self._write_ended()  # the open alerts of the dropped streams resolve
        for p in partitions:
            self._last.pop(p, None)
            self._committed.pop(p, None)
        log.info("partitions %s revoked; dropped %d streams", sorted(partitions), dropped)

    def _on_assigned(self, assigned) -> None:
        # Stream state starts empty, so every assigned partition must be read from its committed
        # offset (the oldest chunk an unscored window needs), even one this worker kept and
        # whose fetch position is further on. The seek happens after the poll returns
        # (the consumer cannot be used inside its own callback).
        self._finish_inflight(commit=False)
        self._to_rewind.update(assigned)
        self._n_assigned = len(assigned)
        self.metrics.partitions.set(len(assigned))
        log.info("partitions %s assigned", sorted(tp.partition for tp in assigned))

    def run(self, max_idle_s: float | None = None, max_s: float | None = None) -> Summary:
        """Consume until stopped (signal or :meth:`stop`), ``max_idle_s`` without messages, or ``max_s``."""
        self._open()
        # Everything loaded so far (modules, the model, clients) lives as long as the process;
        # keeping it out of the collector's full passes shortens their pauses, which otherwise
        # stop every stream for up to ~0.2 s every few seconds under load (docs/reliability.md).
        gc.freeze()
        t_start = last_msg = time.time()
        last_lag = 0.0
        try:
            while not self._stop.is_set():
                self._loop_t = time.monotonic()
                now = time.time()
                if max_s is not None and now - t_start > max_s:
                    break
                # with a batch in flight, only take what is already fetched: its alerts wait
                waited = not self._inflight
                polled = self._poll(0 if self._inflight else self.cfg.poll_timeout_ms)
                if self._to_rewind:
                    polled = self._rewind(polled)
                if polled:
                    self._inflight.append(self._stage(polled))  # overlaps the inference
                    self._finish_ready()
                    if not self.cfg.overlap_inference:
                        self._finish_inflight()
                    last_msg = time.time()
                else:
                    self._finish_inflight()
                    # nothing came for a whole poll timeout: commit all that is durable; an
                    # empty poll between batches commits at most once per commit interval,
                    # as batches do (finding the offsets visits every stream)
                    if self._last and (waited or self._commit_due()):
                        self._commit()
                    if max_idle_s is not None and time.time() - last_msg > max_idle_s:
                        break
                if time.time() - self._broker_checked >= 1.0:
                    self._check_broker()
                    self._update_lag()
                    self._update_outbox()
                if time.time() - last_lag > 5.0:
                    self._finish_inflight()
                    # streams that ended no longer hold their partition's committed offset back
                    if self.pipeline.evict_idle(time.time(), self.cfg.stream_idle_s):
                        self._write_ended()  # before the commit: their open alerts resolve
                        self._commit()
                    last_lag = time.time()
        finally:
            self.close()
            self.summary.seconds = time.time() - t_start
        return self.summary

    def _poll(self, timeout_ms: int) -> dict:
        """One poll of the consumer; ``{}`` when the broker cannot be reached.

        The consumer reconnects by itself, but while the broker is down some of its retriable
        errors (a refused connection while it looks for the group's coordinator) come out of
        ``poll``. They are an outage, which :meth:`_check_broker` reports, not a reason to stop:
        the worker waits a moment and polls again.
        """
        from kafka.errors import KafkaError

        try:
            return self.consumer.poll(timeout_ms=timeout_ms, max_records=self.cfg.max_poll_records)
        except KafkaError as exc:
            if not exc.retriable:
                raise
            log.debug("poll failed while the broker is unreachable: %s", exc)
            self._stop.wait(min(0.5, self.cfg.poll_timeout_ms / 1000))
            return {}

    def _rewind(self, polled: dict) -> dict:
        """Seek newly assigned partitions to their committed offsets; drop their polled records."""
        rewound = set()
        for tp in list(self._to_rewind):
            committed = self.consumer.committed(tp)
            if committed is not None:
                self.consumer.seek(tp, committed)
                self._committed[tp.partition] = committed
            else:  # nothing committed yet: start where a new group starts (earliest)
                self.consumer.seek_to_beginning(tp)
            rewound.add(tp)
        self._to_rewind.clear()
        return {tp: recs for tp, recs in polled.items() if tp not in rewound}

    def close(self) -> None:
        """Complete the batch in flight, commit what is durable, stop the webhook thread (after a
        short drain), close clients."""
        if self.consumer is not None:
            try:
                self._finish_inflight()
                self._commit()
            except Exception as exc:  # the group may already be gone
                log.warning("final commit failed: %s", exc)
            self.consumer.close(autocommit=False)
            self.consumer = None
        if self.router is not None:
            self.router.close(self._drain_s)
            self.router = None
        if self.scores_sink is not None:
            self.scores_sink.close()
        if self.producer is not None:
            self.producer.close(timeout=10 if not self.interrupted else 2)
            self.producer = None
        if self._infer_pool is not None:
            self._infer_pool.shutdown()
            self._infer_pool = None
        self.metrics.close()

    # ---------------------------------------------------------------- one poll

    def process_batch(self, polled: dict) -> None:
        """Decode, score, make durable and commit one poll's records."""
        self._finish_inflight()
        self._finish(self._stage(polled))

    def _stage(self, polled: dict) -> _Staged:
        """Decode a poll, cut its windows and submit their inference call."""
        t0 = time.perf_counter()
        items: list[Incoming] = []
        dead: list[tuple] = []
        stamps: list[int] = []
        n = 0
        for tp, records in polled.items():
            n += len(records)
            for r in records:
                try:
                    chunk = decode(r.value, r.key)
                except WireError as exc:
                    dead.append((r, exc.reason, exc.detail))
                    continue
                items.append(Incoming(chunk, tp.partition, r.offset))
                stamps.append(r.timestamp)
            self._last[tp.partition] = records[-1].offset
        prep = self.pipeline.prepare(items)
        if stamps:
            age_ms = time.time() * 1000.0 - min(stamps)
            self._catching_up = age_ms > self.cfg.catchup_after_s * 1000.0
            if self._catching_up:
                self.metrics.catchup_batches.inc()
        if self._infer_pool is None:
            self._infer_pool = ThreadPoolExecutor(
                max(self.cfg.inference_depth, self.cfg.catchup_inference_depth),
                thread_name_prefix="ecgstream-inference",
            )
        future = self._infer_pool.submit(self.pipeline.infer, prep)
        commit_to = self._commit_targets() if self._commit_due() else None
        return _Staged(polled, items, dead, stamps, n, prep, future, commit_to, t0)

    def _finish_inflight(self, commit: bool = True) -> None:
        """Complete every batch in flight, in poll order.

        ``commit=False`` skips the batches' own offset commits: inside the consumer's rebalance
        callbacks, which run on its network thread, a blocking commit raises instead of waiting.
        """
        while self._inflight:
            self._finish(self._inflight.popleft(), commit=commit)

    def _finish_ready(self) -> None:
        """Complete the oldest batches while more than the depth are in flight or their
        inference is done (a finished batch need not wait for the next poll).

        The depth is ``inference_depth``, or ``catchup_inference_depth`` while the worker is
        catching up with records older than ``catchup_after_s``.
        """
        depth = self.cfg.inference_depth
        if self._catching_up:
            depth = max(depth, self.cfg.catchup_inference_depth)
        while self._inflight and (
            len(self._inflight) > depth or self._inflight[0].inference.done()
        ):
            self._finish(self._inflight.popleft())

    def _write_ended(self) -> None:
        """Make the ``resolved`` messages of alerts on forgotten streams durable."""
        ended = self.pipeline.take_ended()
        if not ended:
            return
        self.router.write([a.to_dict() for a in ended])
        for a in ended:
            self.summary.alerts[a.kind] += 1
            self.metrics.alerts.labels(a.kind, a.severity).inc()

    def _finish(self, staged: _Staged, commit: bool = True) -> None:
        """Alerts of a staged batch, made durable in every sink; then its offsets are committed."""
        m = self.metrics
        res = self.pipeline.complete(staged.prep, staged.inference.result())
        dead = staged.dead
        for item, reason, detail in res.rejected:
            dead.append((self._record_of(staged.polled, item), reason, detail))
        skipped = self._dead_letter(dead) if dead else 0
        alerts = [a.to_dict() for a in res.alerts]
        self.router.write(alerts)
        if self.scores_sink is not None:
            self.scores_sink.write(res.scores)
        t_durable = time.time()
        if commit and staged.commit_to is not None:
            self._commit(staged.commit_to)
        # metrics and summary
        n = staged.n
        self.summary.add(res, n)
        self.summary.streams.update(i.chunk.stream for i in staged.items)
        m.messages.labels("ok").inc(len(staged.items) - len(res.rejected))
        if dead:
            m.messages.labels("dead_letter").inc(len(dead) - skipped)
        if skipped:
            m.messages.labels("skipped").inc(skipped)
        m.windows.labels("scored").inc(res.windows)
        m.windows.labels("suppressed").inc(res.suppressed)
        if res.carried or res.primed:
            m.stream_step.labels("window").inc(res.carried)
            m.stream_step.labels("primer").inc(res.primed)
        for a in res.alerts:
            m.alerts.labels(a.kind, a.severity).inc()
        for kind, count in res.events.items():
            m.stream_events.labels(kind).inc(count)
        m.batch_messages.observe(n)
        if res.windows:
            m.batch_windows.observe(res.windows)
            m.inference_s.observe(res.inference_s)
        m.streams.set(len(self.pipeline.streams))
        m.batch_s.observe(time.perf_counter() - staged.t0)
        if self.record_latency:
            self.latencies.extend(t_durable - s / 1000.0 for s in staged.stamps)

    def _record_of(self, polled: dict, item: Incoming):
        for tp, records in polled.items():
            if tp.partition == item.partition:
                for r in records:
                    if r.offset == item.offset:
                        return r
        raise KeyError(item.offset)

    def _dead_letter(self, dead: list[tuple]) -> int:
        """Copy rejected records to the dead-letter topic, with why and where from; returns how
        many could not be copied.

        A record the dead-letter topic refuses for good (larger than the producer or the broker
        accepts, or another error retrying cannot fix) is logged with its topic, partition and
        offset, counted in ``ecgstream_dlq_failed`` and skipped: no single message stops the
        worker. A retriable error (the broker is down) still raises, before anything is
        committed, so the records are read again.
        """
        from kafka.errors import KafkaError

        sent = []
        failed = 0
        for r, reason, detail in dead:
            log.warning(
                "dead-letter %s[%d]@%d: %s: %s", r.topic, r.partition, r.offset, reason, detail
            )
            headers = dlq_headers(reason, detail, r.topic, r.partition, r.offset, r.timestamp)
            try:
                future = self.producer.send(
                    self.cfg.dlq_topic, key=r.key, value=r.value or b"", headers=headers
                )
            except KafkaError as exc:
                if exc.retriable:
                    raise
                failed += self._dead_letter_failed(r, reason, exc)
                continue
            sent.append((r, reason, future))
        self.producer.flush(timeout=30)
        for r, reason, future in sent:
            try:
                future.get(timeout=30)
            except KafkaError as exc:
                if exc.retriable:
                    raise
                failed += self._dead_letter_failed(r, reason, exc)
                continue
            self.summary.dlq[reason] += 1
            self.metrics.dlq.labels(reason).inc()
        return failed

    def _dead_letter_failed(self, r, reason: str, exc: Exception) -> int:
        """Log and count a record that could not be dead-lettered (it is skipped); returns 1."""
        size = len(r.value or b"")
        self.summary.skipped[reason] += 1
        self.metrics.dlq_failed.labels(reason).inc()
        log.error(
            "skipped %s[%d]@%d (%d bytes, %s): the dead-letter topic %s refused it: %s",
            r.topic,
            r.partition,
            r.offset,
            size,
            reason,
            self.cfg.dlq_topic,
            exc,
        )
        return 1

    def _commit_due(self) -> bool:
        """Whether ``commit_interval_ms`` has passed since the last commit; restarts it if so."""
        now = time.monotonic()
        if now - self._commit_t < self.cfg.commit_interval_ms / 1000:
            return False
        self._commit_t = now
        return True

    def _commit_targets(self) -> dict[int, int]:
        """Per partition, the oldest offset still needed (<= last processed + 1)."""
        needed = self.pipeline.needed_offsets()
        return {p: min(last + 1, needed.get(p, last + 1)) for p, last in self._last.items()}

    def _commit(self, targets: dict[int, int] | None = None) -> None:
        """Commit ``targets`` (default: :meth:`_commit_targets`, with no batch in flight) where
        they move a partition's committed offset forward."""
        from kafka.errors import KafkaError

        offsets = self._commit_offsets(self._commit_targets() if targets is None else targets)
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:  # e.g. a rebalance in progress: the next owner re-reads
            self._commit_failed(exc)
            return
        self._committed_to(offsets)

    def _commit_failed(self, exc: Exception, when: str = "") -> None:
        self.metrics.commits.labels("failed").inc()
        log.warning("offset commit%s failed (records will be re-read): %s", when, exc)

    def _commit_offsets(self, targets: dict[int, int]) -> dict:
        """The commit request for ``targets``: the partitions whose committed offset moves on."""
        from kafka.structs import OffsetAndMetadata, TopicPartition

        return {
            TopicPartition(self.cfg.topic, p): OffsetAndMetadata(target, "", -1)
            for p, target in targets.items()
            if p in self._last and target > self._committed.get(p, -1)
        }

    def _committed_to(self, offsets: dict) -> None:
        self.metrics.commits.labels("ok").inc()
        for tp, om in offsets.items():
            self._committed[tp.partition] = om.offset

    def _check_broker(self, grace_s: float = 2.0) -> None:
        """Log and count broker outages: no connection at all for ``grace_s`` seconds.

        The consumer keeps reconnecting by itself; this only makes an outage visible
        (``ecgstream_broker_up``, ``ecgstream_broker_outages``, one log line each way).
        """
        now = self._broker_checked = time.time()
        try:
            n = self.consumer.metrics().get("consumer-metrics", {}).get("connection-count")
        except Exception:  # metrics must never stop the worker
            return
        if n is None:
            return
        if n > 0:
            self._broker_up = True
            self._no_conn_since = None
            if self._outage_since is not None:
                log.warning(
                    "broker %s is back after %.1f s without a connection; consuming resumes",
                    self.cfg.bootstrap,
                    now - self._outage_since,
                )
                self._outage_since = None
            self.metrics.broker_up.set(1)
            return
        if self._no_conn_since is None:
            self._no_conn_since = now
        if self._outage_since is None and now - self._no_conn_since >= grace_s:
            self._outage_since = self._no_conn_since
            self._broker_up = False
            self.metrics.broker_up.set(0)
            self.metrics.broker_outages.inc()
            log.warning(
                "broker %s unreachable for %.0f s; the worker keeps running and reconnecting",
                self.cfg.bootstrap,
                now - self._no_conn_since,
            )

    def _update_outbox(self) -> None:
        """Export how many webhook deliveries wait in the outbox (``ecgstream_outbox_pending``)."""
        outbox = self.router.outbox if self.router is not None else None
        if outbox is None:
            return
        try:
            self.metrics.outbox_pending.set(outbox.pending())
        except Exception:  # metrics must never stop the worker
            log.debug("outbox count failed", exc_info=True)

    def _update_lag(self) -> None:
        """Export the consumer lag, and re-read partitions whose log now ends before our position.

        A position past the end of a partition means its log was truncated or the topic was
        recreated (a broker that lost its storage): the records there now were never read, so
        the partition is read again from its committed offset, or from its beginning.
        """
        behind = []
        try:
            lag = 0
            for tp in self.consumer.assignment():
                hw = self.consumer.highwater(tp)
                if hw is None:
                    continue
                position = self.consumer.position(tp)
                if position > hw:
                    behind.append((tp, position, hw))
                lag += max(0, hw - position)
            self.metrics.lag.set(lag)
        except Exception:  # metrics must never stop the worker
            log.debug("lag update failed", exc_info=True)
        for tp, position, hw in behind:
            committed = self.consumer.committed(tp)
            log.warning(
                "partition %d ends at offset %d, before this worker's position %d: its log was "
                "truncated or the topic recreated; reading it again from offset %s",
                tp.partition,
                hw,
                position,
                committed if committed is not None and committed <= hw else "0",
            )
            if committed is not None and committed <= hw:
                self.consumer.seek(tp, committed)
            else:
                self.consumer.seek_to_beginning(tp)
