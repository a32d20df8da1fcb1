"""Secrets and Kafka transport security for the worker, from the one typed run config.

- Secrets (the webhook signing secret, the SASL password, the TLS key password) come from the
  environment (``ECGSTREAM_RUN__WEBHOOK_SECRET``, ...) or from a file (``webhook_secret_file``,
  e.g. a mounted Kubernetes or Docker secret); a flag works too but shows in ``ps``. They are
  never logged: :class:`Secret` hides its value in ``repr``/``str``, and :func:`redacted` gives a
  loggable view of a config.
- :func:`kafka_options` turns the ``security_protocol``, ``ssl_*`` and ``sasl_*`` settings into
  the keyword arguments of kafka-python's ``KafkaConsumer``, ``KafkaProducer`` and
  ``KafkaAdminClient`` (TLS, SASL PLAIN / SCRAM over TLS or plaintext).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ecgstream.config import ConfigError

__all__ = ["Secret", "read_secret", "webhook_secret", "kafka_options", "redacted", "SECRET_FIELDS"]

#: config fields that hold secrets (never logged, never shown)
SECRET_FIELDS = ("webhook_secret", "sasl_password", "ssl_password")
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
MAX_SECRET_BYTES = 4096


class Secret(str):
    """A string whose ``repr`` and ``str`` formatting hide it (use ``.reveal()`` to get it)."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"

    def __str__(self) -> str:
        return "***" if self else ""

    def __format__(self, spec: str) -> str:
        return str(self)

    def reveal(self) -> str:
        return str.__str__(self)


def read_secret(value: str, file: str | Path | None, name: str) -> Secret:
    """The secret ``name`` from its value or from ``file`` (first line, whitespace stripped).

    Giving both is an error (which one would win is a surprise). The error messages name the
    setting and the file, never the secret.
    """
    if file:
        if value:
            raise ConfigError(f"{name} and {name}_file are both set; set only one")
        path = Path(file)
        try:
            if path.stat().st_size > MAX_SECRET_BYTES:
                raise ConfigError(f"{name}_file {path} is larger than {MAX_SECRET_BYTES} bytes")
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{name}_file {path} cannot be read: {exc.strerror}") from None
        lines = text.strip().splitlines()
        value = lines[0].strip() if lines else ""
        if not value:
            raise ConfigError(f"{name}_file {path} is empty")
    return Secret(value or "")


def webhook_secret(cfg: Any) -> Secret:
    """The webhook signing secret of a run config (``webhook_secret`` or ``webhook_secret_file``)."""
    return read_secret(
        cfg.webhook_secret, getattr(cfg, "webhook_secret_file", ""), "webhook_secret"
    )


def kafka_options(cfg: Any) -> dict[str, Any]:
    """kafka-python client keyword arguments for the TLS/SASL settings of ``cfg``.

    Empty for ``PLAINTEXT`` (the default). Files are checked to exist so a typo fails at start-up
    with the setting's name instead of as a handshake error later.
    """
    protocol = (getattr(cfg, "security_protocol", "") or "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise ConfigError(f"security_protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if protocol == "PLAINTEXT":
        return {}
    opts: dict[str, Any] = {"security_protocol": protocol}
    if protocol.endswith("SSL"):
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_crlfile"):
            path = getattr(cfg, key, "")
            if path:
                if not Path(path).is_file():
                    raise ConfigError(f"{key} {path} not found")
                opts[key] = str(path)
        opts["ssl_check_hostname"] = bool(getattr(cfg, "ssl_check_hostname", True))
        password = read_secret(
            getattr(cfg, "ssl_password", ""), getattr(cfg, "ssl_password_file", ""), "ssl_password"
        )
        if password:
            opts["ssl_password"] = password.reveal()
    if protocol.startswith("SASL"):
        mechanism = (getattr(cfg, "sasl_mechanism", "") or "PLAIN").upper()
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(
                f"sasl_mechanism {mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}"
            )
        opts["sasl_mechanism"] = mechanism
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            user = getattr(cfg, "sasl_username", "")
            password = read_secret(
                getattr(cfg, "sasl_password", ""),
                getattr(cfg, "sasl_password_file", ""),
                "sasl_password",
            )
            if not user or not password:
                raise ConfigError(
                    f"SASL {mechanism} needs sasl_username and sasl_password (or sasl_password_file)"
                )
            opts["sasl_plain_username"] = user
            opts["sasl_plain_password"] = password.reveal()
    return opts


def redacted(cfg: Any) -> dict[str, Any]:
    """The fields of a config dataclass with every secret replaced by ``***`` (for logs)."""
    out = dataclasses.asdict(cfg)
    for key in SECRET_FIELDS:
        if out.get(key):
            out[key] = "***"
    return out
