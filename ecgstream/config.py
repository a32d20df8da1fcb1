"""One place for configuration: typed dataclasses, filled from defaults < TOML < environment < flags.

Each command has a section class here (``[train]``, ``[run]``, ...). :func:`load` builds one:

- defaults are the dataclass field defaults;
- a TOML file's ``[section]`` table overrides them (unknown keys are an error, so typos show);
- environment variables ``ECGSTREAM_<SECTION>__<FIELD>`` (e.g. ``ECGSTREAM_RUN__BOOTSTRAP``)
  override the file;
- command-line flags that were given (not ``None``) override everything.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

from ecgstream.alerts.rhythm import RhythmConfig
from ecgstream.alerts.state import AlertConfig

__all__ = ["ConfigError", "load", "coerce", "KafkaSecurityConfig", "RunConfig", "ReplayConfig"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the key and the source."""


def coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Convert ``value`` (often a string from the environment) to the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return coerce(value, non_none[0], key, source)
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation in (int, float, str):
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return annotation(value)
        if annotation is Path:
            return Path(value)
        if origin in (list, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            inner = args[0] if args else str
            return [
                coerce(v.strip() if isinstance(v, str) else v, inner, key, source) for v in items
            ]
        if origin is dict or annotation is dict:
            if isinstance(value, str):
                import json

                return json.loads(value)
            return dict(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {key}={value!r} is not a valid {annotation}") from exc
    return value


def load(
    cls: type[T],
    section: str,
    toml_path: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> T:
    """Build a ``cls`` config from defaults, the TOML ``[section]``, environment and flags."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if toml_path is not None:
        path = Path(toml_path)
        if not path.exists():
            raise ConfigError(f"config file {path} not found")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        table = data.get(section, {})
        unknown = sorted(set(table) - set(fields))
        if unknown:
            raise ConfigError(
                f"{path} [{section}]: unknown keys {unknown}; known: {sorted(fields)}"
            )
        for key, value in table.items():
            values[key] = coerce(value, hints[key], key, f"{path} [{section}]")
    prefix = f"ECGSTREAM_{section.upper()}__"
    for name, value in environ.items():
        if name.startswith(prefix):
            key = name[len(prefix) :].lower()
            if key not in fields:
                raise ConfigError(
                    f"environment {name}: unknown key {key!r}; known: {sorted(fields)}"
                )
            values[key] = coerce(value, hints[key], key, f"environment {name}")
    for key, value in (flags or {}).items():
        if value is not None and key in fields:
            values[key] = coerce(value, hints[key], key, f"flag --{key.replace('_', '-')}")
    return cls(**values)


#: Fields whose values are secrets: shown as ``***`` in a config's repr.
SECRET_FIELDS = ("webhook_secret", "ssl_password", "sasl_password")


@dataclasses.dataclass
class KafkaSecurityConfig:
    """Kafka transport security (TLS, SASL), passed through to kafka-python.

    Shared by ``[run]`` and ``[replay]``; see ``ecgstream/streaming/security.py``. Secrets may
    also come from ``*_file`` paths, and never appear in the repr (so not in logs or tracebacks).
    """

    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_crlfile: str = ""
    ssl_check_hostname: bool = True
    ssl_password: str = ""
    ssl_password_file: str = ""
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    sasl_password_file: str = ""

    def __repr__(self) -> str:
        fields = (
            f"{f.name}={'***' if f.name in SECRET_FIELDS and getattr(self, f.name) else repr(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
        )
        return f"{type(self).__name__}({', '.join(fields)})"


@dataclasses.dataclass(repr=False)  # keeps the secret-hiding repr
class RunConfig(KafkaSecurityConfig):
    """``[run]``: the streaming worker (``ecgstream run``).

    Kafka: ``bootstrap`` servers, raw ``topic``, consumer ``group``, dead-letter ``dlq_topic``,
    optional ``alerts_topic`` ("" = off). ``model`` "" means the shipped model. Alerts go to the
    durable ``outbox`` (SQLite) for ``webhook_urls`` signed with ``webhook_secret`` (``whsec_...``),
    to ``alerts_out`` as JSON lines ("-" = stdout, "" = off), and per-window scores to
    ``scores_out`` ("" = off). Alert policy in calibrated score units and seconds; the rhythm
    alert thresholds in beats per minute, seconds and periodicity (0-1), see
    :class:`~ecgstream.alerts.rhythm.RhythmConfig`.
    """

    bootstrap: str = "localhost:9092"
    # how long ``run`` tries to reach a bootstrap server at start before it gives up (exit 1);
    # once running, the worker rides out broker outages of any length
    connect_timeout_s: float = 3.0
    topic: str = "ecg.raw"
    group: str = "ecgstream"
    dlq_topic: str = "ecg.raw.dlq"
    alerts_topic: str = ""
    create_topics: bool = True
    partitions: int = 4
    model: str = ""
    threads: int = 1
    batch_size: int = 256  # windows per ONNX Runtime call; larger batches cost memory, not speed
    outbox: str = "ecgstream-outbox.sqlite"
    webhook_urls: list[str] = dataclasses.field(default_factory=list)
    webhook_secret: str = ""
    alerts_out: str = "-"
    scores_out: str = ""
    metrics_port: int = 0
    # address the metrics and health listener binds to: loopback by default; "0.0.0.0" (all
    # interfaces) where a scraper elsewhere (another container) must reach it
    metrics_addr: str = "127.0.0.1"
    max_poll_records: int = 2000
    poll_timeout_ms: int = 200
    # longest the broker may hold a fetch open waiting for new data; some brokers (Tansu) answer
    # only when it expires, so it bounds the wait a new chunk sees before it is fetched
    fetch_max_wait_ms: int = 25
    # consumed offsets are committed at most this often (0: after every batch); a worker that
    # takes over re-reads at most this much more, and a commit costs a broker round trip plus a
    # pass over every stream, so committing every small poll of a busy worker wastes a core
    commit_interval_ms: int = 1000
    # run a poll's inference in a second thread while the next poll is decoded (more throughput
    # with a core for each); off, every batch is durable before the next poll
    overlap_inference: bool = True
    # inference calls in flight at once, each in its own thread (with overlap_inference): 2 lets
    # a second core score one poll while another poll is scored and the next one decoded
    inference_depth: int = 1
    # inference calls in flight while catching up: a poll whose oldest record was published
    # more than catchup_after_s ago (a backlog after an outage, a restart or a rebalance) is
    # late already, so a second call in flight drains the backlog faster at no cost in latency
    # that matters; fresh records keep inference_depth
    catchup_inference_depth: int = 2
    catchup_after_s: float = 5.0
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    stream_idle_s: float = 60.0
    # alert policy (ecgstream/alerts/state.py AlertConfig; docs/operations.md "Alert policy"):
    # the defaults are AlertConfig's and RhythmConfig's own
    threshold: float | None = None
    min_windows: int = AlertConfig.min_windows
    hysteresis: float = AlertConfig.hysteresis
    cooldown_s: float = AlertConfig.cooldown_s
    critical_margin: float = AlertConfig.critical_margin
    sustain_s: float = AlertConfig.sustain_s
    update_s: float = AlertConfig.update_s
    rise: float = AlertConfig.rise
    cooldown_rise: float = AlertConfig.cooldown_rise
    adaptive: bool = False
    drift: bool = False
    # rhythm alerts (ecgstream/alerts/rhythm.py RhythmConfig): on/off and their thresholds
    rhythm: bool = AlertConfig.rhythm
    irregular_below: float = RhythmConfig.irregular_below
    irregular_hysteresis: float = RhythmConfig.irregular_hysteresis
    irregular_windows: int = RhythmConfig.irregular_windows
    tachy_bpm: float = RhythmConfig.tachy_bpm
    tachy_critical_bpm: float = RhythmConfig.tachy_critical_bpm
    brady_bpm: float = RhythmConfig.brady_bpm
    brady_critical_bpm: float = RhythmConfig.brady_critical_bpm
    rate_windows: int = RhythmConfig.rate_windows
    rate_min_regularity: float = RhythmConfig.rate_min_regularity
    pause_s: float = RhythmConfig.pause_s
    technical: bool = True
    flat_ptp: float = 0.01
    saturation_level: float = 10.0
    webhook_secret_file: str = ""

    def __post_init__(self) -> None:
        self.alert_policy()  # a value out of range is an error now, naming its field

    def alert_policy(self) -> AlertConfig:
        """The alert policy of these settings (anomaly and rhythm alerts)."""
        from ecgstream.alerts.state import alert_policy

        try:
            return alert_policy(self)
        except ValueError as exc:
            raise ConfigError(f"run.{exc}") from None


@dataclasses.dataclass(repr=False)  # keeps the secret-hiding repr
class ReplayConfig(KafkaSecurityConfig):
    """``[replay]``: publishing WFDB records to Kafka as live streams (``ecgstream replay``).

    ``chunk_s`` seconds per message; ``speed`` 1 = real time, 0 = as fast as possible;
    ``copies`` streams per record; ``encoding`` ``binary`` (int16 or float32 ``sample_type``)
    or ``json``; ``limit_s`` replays at most that many seconds of each record (0 = all).
    """

    bootstrap: str = "localhost:9092"
    topic: str = "ecg.raw"
    partitions: int = 4
    chunk_s: float = 1.0
    speed: float = 1.0
    copies: int = 1
    encoding: str = "binary"
    sample_type: str = "int16"
    limit_s: float = 0.0
    loop: bool = False
