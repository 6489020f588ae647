"""A real HTTP receiver for the tests: a threaded `http.server` on 127.0.0.1.

The `receiver` fixture records every request (path, headers, body, when) and answers
200, or 500 for the first `fail_first` requests, or only after `hang_s`. Webhooks and
chat channels are delivered to it over real sockets. `verify()` checks a signed
webhook the way a receiver would.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A local webhook receiver: records requests, fails the first `fail_first` with 500,
    or sleeps `hang_s` before answering."""

    fail_first: int = 0
    hang_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base: str = ""  # http://127.0.0.1:<port>
    url: str = ""  # base + "/hook"

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            self.requests.append(Received(path, headers, body))
            n = len(self.requests)
        if self.hang_s:
            time.sleep(self.hang_s)
        return 500 if n <= self.fail_first else 200

    def wait_for(self, count: int, timeout_s: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} requests, got {len(self.requests)}")


@contextlib.contextmanager
def running_receiver() -> Iterator[Receiver]:
    """A real HTTP receiver on 127.0.0.1 for as long as the block runs."""
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = rec.handle(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            try:
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass  # the client gave up (timeout): nothing to answer

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rec.base = f"http://127.0.0.1:{server.server_address[1]}"
    rec.url = rec.base + "/hook"
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as rec:
        yield rec


def verify(secret: str, received: Received, max_age_s: float = 300) -> None:
    """What a receiver does: recompute the HMAC over "<timestamp>." + body, compare in
    constant time, refuse old timestamps."""
    timestamp = received.headers["x-cshare-timestamp"]
    assert abs(time.time() - int(timestamp)) < max_age_s
    expected = hmac.new(
        secret.encode(), timestamp.encode() + b"." + received.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(received.headers["x-cshare-signature"], f"sha256={expected}")
