"""A real HTTP webhook receiver whose failure mode can be switched while it runs.

Modes: ``ok`` (200), ``error`` (500), ``timeout`` (holds the request longer than the sender
waits), ``slow`` (answers 200 after ``slow_s``), ``gone`` (410) and ``refused`` (the listening
socket is closed, so connections are refused; switching back reopens the same port).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ecgstream.sinks.webhook import verify

__all__ = ["FlakyReceiver"]


class FlakyReceiver:
    """Records every request as ``(time, webhook-id, mode, signature ok)``."""

    def __init__(
        self, secret: str, mode: str = "ok", port: int = 0, slow_s: float = 0.3, hold_s: float = 3.0
    ):
        self.secret, self.slow_s, self.hold_s = secret, slow_s, hold_s
        self.requests: list[tuple[float, str, str, bool]] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        if not port:  # reserve a port now, so the URL stays the same while "refused"
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        self.port = port
        self.mode = "refused"
        self.set_mode(mode)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def _handler(self):
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                mode = rx.mode
                ok = verify(rx.secret, headers, body)
                with rx.lock:
                    rx.requests.append((time.time(), headers.get("webhook-id", ""), mode, ok))
                json.loads(body)
                if mode == "timeout":
                    time.sleep(rx.hold_s)
                elif mode == "slow":
                    time.sleep(rx.slow_s)
                status = {"ok": 200, "slow": 200, "error": 500, "timeout": 200, "gone": 410}.get(
                    mode, 500
                )
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up (timeout)

            def log_message(self, *args):
                pass

        return Handler

    def set_mode(self, mode: str) -> None:
        if mode == "refused":
            self._close()
        elif self.server is None:
            ThreadingHTTPServer.allow_reuse_address = True
            self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
            self.server.daemon_threads = True
            self.port = self.server.server_address[1]
            threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.mode = mode

    def _close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def delivered(self) -> set[str]:
        """Ids answered 2xx (``ok`` and ``slow`` requests with a valid signature)."""
        with self.lock:
            return {i for _, i, m, ok in self.requests if m in ("ok", "slow") and ok}

    def attempts(self, alert_id: str) -> list[float]:
        with self.lock:
            return [t for t, i, _, _ in self.requests if i == alert_id]

    def wait_delivered(self, ids: set[str], timeout_s: float) -> bool:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if ids <= self.delivered():
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self._close()
