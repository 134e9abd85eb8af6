"""A webhook receiver on 127.0.0.1 for the worker's webhook tests (one, not a copy per file).

It records every request (method, path, headers, body, arrival time and, for JSON, the
event name) and answers `failures` requests with `fail_status`, then `status` with the
extra `headers`. With `secret` set it also records whether the signature checked out, with
the receiver's check documented in docs/deployment.md ("Verifying a webhook").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# The receiver's check, as documented (docs/deployment.md, "Verifying a webhook").
def verify(secret: str, headers, body: bytes, tolerance_s: int = 300) -> bool:
    timestamp = headers.get("X-Clipwatch-Timestamp", "")
    signature = headers.get("X-Clipwatch-Signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
        return False  # missing, or too old: a replay
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(signature, "sha256=" + expected.hexdigest())


def _event(body: bytes) -> object:
    try:
        return json.loads(body).get("event")
    except (ValueError, AttributeError):
        return None


class Receiver:
    """Records each request; answers `failures` with `fail_status`, then `status`."""

    def __init__(
        self,
        status: int = 204,
        headers: Mapping[str, str] | None = None,
        *,
        failures: int = 0,
        fail_status: int = 503,
        secret: str = "",
    ) -> None:
        self.status, self.headers = status, dict(headers or {})
        self.failures, self.fail_status, self.secret = failures, fail_status, secret
        self.requests: list[dict[str, object]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append(
                    {
                        "at": time.monotonic(),
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                        "event": _event(body),
                        "verified": verify(receiver.secret, self.headers, body),
                    }
                )
                failing = len(receiver.requests) <= receiver.failures
                self.send_response(receiver.fail_status if failing else receiver.status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = _record

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
