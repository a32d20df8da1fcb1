"""Security: secrets from environment or file and never logged, Kafka TLS/SASL pass-through,
no patient or device ids in metric labels.

A TLS or SASL Kafka broker is not available on the test machines (Tansu here listens on
plaintext only), so the TLS/SASL test checks that the settings reach the kafka-python client
constructors with the names kafka-python accepts; it does not perform a handshake.
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
from conftest import synthetic_ecg, write_record
from prometheus_client.parser import text_string_to_metric_families
from sinks.receiver import Receiver
from streaming.conftest import free_port
from streaming.helpers import burst

from ecgstream.config import ConfigError, ReplayConfig, RunConfig, load
from ecgstream.sinks.webhook import new_secret
from ecgstream.streaming.kafka import ensure_topics, make_producer
from ecgstream.streaming.replay import plan_streams, publish
from ecgstream.streaming.security import kafka_options, read_secret, redacted, webhook_secret

T0 = 1_700_000_000.0
#: stream ids that look like what hospitals use: they must never become metric labels
IDENTIFIERS = ["MRN-00481516", "bed7-device-ACME-0042"]
ALLOWED_LABELS = {"outcome", "reason", "kind", "severity", "result", "le", "quantile"}


def _secret_forms(secret: str) -> list[str]:
    body = secret.removeprefix("whsec_")
    return [secret, body, base64.b64decode(body).hex()]


def test_secret_from_a_file_and_errors_that_do_not_show_it(tmp_path):
    secret = new_secret()
    f = tmp_path / "webhook.secret"
    f.write_text(secret + "\n")
    cfg = load(RunConfig, "run", environ={"ECGSTREAM_RUN__WEBHOOK_SECRET_FILE": str(f)})
    got = webhook_secret(cfg)
    assert got.reveal() == secret
    assert secret not in repr(got) and secret not in f"{got}" and secret not in "%s" % (got,)  # noqa: UP031
    env_cfg = load(RunConfig, "run", environ={"ECGSTREAM_RUN__WEBHOOK_SECRET": secret})
    assert webhook_secret(env_cfg).reveal() == secret
    for c in (cfg, env_cfg):
        assert secret not in repr(c) and secret not in str(redacted(c))
    with pytest.raises(ConfigError) as info:
        read_secret(secret, f, "webhook_secret")
    assert "both" in str(info.value) and secret not in str(info.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        read_secret("", tmp_path / "missing", "webhook_secret")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_secret("", tmp_path / "empty", "webhook_secret")


class _Stop(Exception):
    pass


def test_kafka_tls_and_sasl_settings_reach_every_client(tmp_path, monkeypatch, energy_model):
    """No TLS/SASL broker here: check the options arrive, with names kafka-python knows."""
    import kafka
    import kafka.admin

    from ecgstream.runtime.scorer import Scorer
    from ecgstream.streaming.worker import Worker

    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    pw_file = tmp_path / "sasl.pw"
    pw_file.write_text("s3cret-sasl-pw\n")
    env = {
        "ECGSTREAM_RUN__SECURITY_PROTOCOL": "SASL_SSL",
        "ECGSTREAM_RUN__SSL_CAFILE": str(tmp_path / "ca.pem"),
        "ECGSTREAM_RUN__SSL_CERTFILE": str(tmp_path / "client.pem"),
        "ECGSTREAM_RUN__SSL_KEYFILE": str(tmp_path / "client.key"),
        "ECGSTREAM_RUN__SASL_MECHANISM": "SCRAM-SHA-512",
        "ECGSTREAM_RUN__SASL_USERNAME": "ecgstream",
        "ECGSTREAM_RUN__SASL_PASSWORD_FILE": str(pw_file),
    }
    cfg = load(RunConfig, "run", environ=env)
    cfg.outbox = str(tmp_path / "outbox.sqlite")
    cfg.alerts_out = ""
    expected = {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": str(tmp_path / "ca.pem"),
        "ssl_certfile": str(tmp_path / "client.pem"),
        "ssl_keyfile": str(tmp_path / "client.key"),
        "ssl_check_hostname": True,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "ecgstream",
        "sasl_plain_password": "s3cret-sasl-pw",
    }
    assert kafka_options(cfg) == expected
    for cls in (kafka.KafkaConsumer, kafka.KafkaProducer, kafka.admin.KafkaAdminClient):
        assert set(expected) <= set(cls.DEFAULT_CONFIG), f"{cls.__name__} does not know some option"
    seen: dict[str, dict] = {}

    def spy(name):
        def make(*args, **kwargs):
            seen[name] = kwargs
            if name != "consumer":
                return _FakeClient()
            raise _Stop

        return make

    monkeypatch.setattr(kafka, "KafkaConsumer", spy("consumer"))
    monkeypatch.setattr(kafka, "KafkaProducer", spy("producer"))
    monkeypatch.setattr(kafka.admin, "KafkaAdminClient", spy("admin"))
    # no broker at all here (the clients are spies): skip the start-up reachability check
    monkeypatch.setattr("ecgstream.streaming.worker.check_reachable", lambda *a, **k: None)
    worker = Worker(cfg, Scorer(energy_model))
    with pytest.raises(_Stop):
        worker._open()
    assert set(seen) == {"consumer", "producer", "admin"}
    for name, kwargs in seen.items():
        for k, v in expected.items():
            assert kwargs.get(k) == v, f"{name}: {k} is {kwargs.get(k)!r}"
    assert "s3cret-sasl-pw" not in repr(cfg) and "s3cret-sasl-pw" not in str(redacted(cfg))
    bad = load(
        RunConfig, "run", environ={**env, "ECGSTREAM_RUN__SSL_CAFILE": str(tmp_path / "nope.pem")}
    )
    with pytest.raises(ConfigError, match="ssl_cafile"):
        kafka_options(bad)


class _FakeClient:
    def list_topics(self):
        return ["ecg.raw", "ecg.raw.dlq"]

    def create_topics(self, *a, **k):
        pass

    def close(self, *a, **k):
        pass


@pytest.mark.integration
def test_cli_worker_logs_no_secret_and_metrics_carry_no_identifiers(broker, tmp_path, energy_model):
    secret = new_secret()
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_text(secret)
    rx = Receiver(secret)
    folder = tmp_path / "records"
    for i in range(len(IDENTIFIERS)):
        sig = burst(synthetic_ecg(12, 360, seed=40 + i), 360, 6.0, 2.0)
        write_record(folder, f"r{i}", sig, 360, ["MLII"])
    topic = f"sec-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker, [topic], 2)
    port = free_port()
    env = {**os.environ, "ECGSTREAM_RUN__WEBHOOK_SECRET_FILE": str(secret_file)}
    cmd = [
        sys.executable,
        "-m",
        "ecgstream",
        "-vv",
        "run",
        "--bootstrap",
        broker,
        "--topic",
        topic,
        "--group",
        f"g-{topic}",
        "--model",
        str(energy_model),
        "--outbox",
        str(tmp_path / "o.sqlite"),
        "--webhook",
        rx.url,
        "--alerts-out",
        "-",
        "--min-windows",
        "1",
        "--metrics-port",
        str(port),
        "--max-idle-s",
        "8",
    ]
    log_path = tmp_path / "worker.log"  # a file, not a pipe: debug logging is voluminous
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    metrics = ""
    try:
        streams = plan_streams([folder])
        for s, ident in zip(streams, IDENTIFIERS, strict=True):
            s.stream = ident
        publish(make_producer(broker), topic, streams, speed=0, t_start=T0, progress=False)
        assert rx.wait_for(len(IDENTIFIERS), timeout_s=60), "no alerts reached the receiver"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                metrics = (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                    .read()
                    .decode()
                )
            except OSError:
                metrics = ""
            if "ecgstream_alerts_total" in metrics and "ecgstream_windows_total" in metrics:
                break
            time.sleep(0.5)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
        rx.close()
    out = log_path.read_text()
    assert proc.returncode == 0, out[-3000:]
    # the secret signed the webhooks ...
    assert rx.alerts and all(ok for *_, ok in rx.received)
    # ... and appears nowhere in the debug log, the alerts or the outbox file
    assert "DEBUG" in out, "debug logging was not on"
    outbox_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("o.sqlite*"))
    for form in _secret_forms(secret):
        assert form not in out, "the webhook secret was logged"
        assert form.encode() not in outbox_bytes
    # metrics: no stream id anywhere, only bounded label names
    assert "ecgstream_windows_total" in metrics, metrics[:2000]
    for ident in IDENTIFIERS:
        assert ident not in metrics, f"stream id {ident} appears in the metrics"
    names = {
        k for fam in text_string_to_metric_families(metrics) for s in fam.samples for k in s.labels
    }
    assert names <= ALLOWED_LABELS, f"unexpected metric labels {names - ALLOWED_LABELS}"
    assert any(ident in out for ident in IDENTIFIERS), "the alerts (stdout) should name the stream"


def test_library_logs_at_debug_never_show_the_secret(caplog, tmp_path):
    """The webhook path itself (dispatcher, retries, 410) logs no secret."""
    from ecgstream.sinks.outbox import Outbox
    from ecgstream.sinks.webhook import WebhookConfig, WebhookDispatcher

    secret = new_secret()
    rx = Receiver(secret, script=[(500, {}), (410, {})])
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.put(
        [{"id": f"a{i}", "stream": "s"} for i in range(3)], [rx.url, "http://127.0.0.1:9/none"]
    )
    with caplog.at_level(logging.DEBUG):
        d = WebhookDispatcher(
            outbox, {rx.url: secret}, WebhookConfig(backoff_base_s=0.05, timeout_s=1)
        )
        for _ in range(6):
            d.deliver_due()
            time.sleep(0.1)
    rx.close()
    assert "410" in caplog.text
    for form in _secret_forms(secret):
        assert form not in caplog.text


@pytest.mark.parametrize("cls", [RunConfig, ReplayConfig])
def test_config_repr_hides_every_secret(cls):
    cfg = cls(ssl_password="tls-pw-123", sasl_password="sasl-pw-456")
    if cls is RunConfig:
        cfg.webhook_secret = "whsec-789"
    text = repr(cfg)
    assert "sasl_password=" in text and "ssl_password=" in text
    assert not any(s in text for s in ("tls-pw-123", "sasl-pw-456", "whsec-789")), text
