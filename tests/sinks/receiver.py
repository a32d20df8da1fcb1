"""A real HTTP webhook receiver on localhost that verifies Standard Webhooks signatures."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ecgstream.sinks.webhook import verify


class Receiver:
    """Collects POSTed alerts; ``script`` is a list of (status, headers) answers used first.

    ``received`` holds every POST as (time, headers, body dict, signature valid);
    ``requests`` every request as (method, path); ``alerts`` the de-duplicated alerts by
    ``webhook-id`` (receivers de-duplicate on it). A script header value may contain
    ``{url}``, replaced by the receiver's own base URL (for redirects to itself).
    """

    def __init__(self, secret: str, script: list[tuple[int, dict]] | None = None):
        self.secret = secret
        self.script = list(script or [])
        self.received: list[tuple[float, dict, dict, bool]] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                ok = verify(receiver.secret, headers, body)
                with receiver.lock:
                    receiver.requests.append(("POST", self.path))
                    answer = receiver.script.pop(0) if receiver.script else (200, {})
                    receiver.received.append((time.time(), headers, json.loads(body), ok))
                self._answer(*answer)

            def do_GET(self):  # noqa: N802 - a webhook must never arrive as a GET
                with receiver.lock:
                    receiver.requests.append(("GET", self.path))
                    answer = receiver.script.pop(0) if receiver.script else (200, {})
                self._answer(*answer)

            def _answer(self, status: int, extra: dict) -> None:
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v.replace("{url}", receiver.base))
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def alerts(self) -> dict[str, dict]:
        with self.lock:
            return {h["webhook-id"]: body for _, h, body, ok in self.received if ok}

    def wait_for(self, n: int, timeout_s: float = 30.0) -> bool:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            with self.lock:
                if len(self.received) >= n:
                    return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
