"""A small webhook receiver for development and demos: verifies signatures, prints alerts.

    python -m ecgstream.sinks.receiver --port 8080 --secret whsec_...

It answers 204 to a correctly signed request (and to a repeated ``webhook-id``, which it does not
print twice), 401 to a bad signature, and prints each new alert as one JSON line on stdout.
The secret may also come from ``ECGSTREAM_RUN__WEBHOOK_SECRET``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ecgstream.sinks.webhook import secret_key, verify

__all__ = ["serve", "main"]


def serve(port: int, secret: str, host: str = "0.0.0.0", out=sys.stdout) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) that verifies and prints webhooks."""
    seen: set[str] = set()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(min(int(self.headers.get("content-length", 0)), 1 << 20))
            headers = {k.lower(): v for k, v in self.headers.items()}
            if secret and not verify(secret, headers, body):
                self.send_response(401)
                self.end_headers()
                return
            with lock:
                new = headers.get("webhook-id") not in seen
                seen.add(headers.get("webhook-id", ""))
                if new:
                    out.write(json.dumps(json.loads(body), separators=(",", ":")) + "\n")
                    out.flush()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ecgstream.sinks.receiver",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--host", default="0.0.0.0", help="address to bind (default all)")
    p.add_argument(
        "--secret",
        default=os.environ.get("ECGSTREAM_RUN__WEBHOOK_SECRET", ""),
        help="whsec_ secret to verify signatures with (default: from the environment)",
    )
    args = p.parse_args(argv)
    if args.secret:
        secret_key(args.secret)
    server = serve(args.port, args.secret, args.host)
    print(
        f"receiving webhooks on http://{args.host}:{args.port}/ "
        f"({'verifying signatures' if args.secret else 'NOT verifying signatures'})",
        file=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
