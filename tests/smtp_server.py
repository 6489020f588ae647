"""A real SMTP server for the tests: aiosmtpd on 127.0.0.1, collecting messages.

`smtp_server` runs one per test on a free port (plain SMTP, no auth; answers 451 to the
first `fail_first` messages so retries can be seen). `smtp_env` also points the
process's settings at it (`CSHARE_SMTP_*`, as an operator would), for code that reads
`get_settings()`; `smtp_server.settings()` gives the same values for a `Settings` copy.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from orgs.config import get_settings

SENDER = "cshare@example.org"


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None, self.message
        return str(part.get_content())


@dataclass
class SmtpServer:
    host: str = "127.0.0.1"
    port: int = 0
    fail_first: int = 0
    mails: list[Mail] = field(default_factory=list)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.attempts += 1
            if self.attempts <= self.fail_first:
                return "451 4.3.0 Try again later"
            raw = envelope.original_content or envelope.content
            assert isinstance(raw, bytes)
            message = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            self.mails.append(
                Mail(str(envelope.mail_from), [str(r) for r in envelope.rcpt_tos], message)
            )
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout_s: float = 20.0) -> list[Mail]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.mails) >= count:
                    return list(self.mails)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} mails, got {len(self.mails)}")

    def settings(self) -> dict[str, Any]:
        """`Settings` fields that send mail through this server."""
        return {
            "smtp_host": self.host,
            "smtp_port": self.port,
            "smtp_from": SENDER,
            "smtp_starttls": False,
            "smtp_ssl": False,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server on 127.0.0.1 for as long as the block runs."""
    server = SmtpServer()
    for attempt in range(5):
        server.port = _free_port()
        controller = Controller(server, hostname=server.host, port=server.port)
        try:
            controller.start()
            break
        except (OSError, RuntimeError):  # the port was taken in between: another one
            if attempt == 4:
                raise
    try:
        yield server
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with running_smtp_server() as server:
        yield server


@pytest.fixture
def smtp_env(smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    """The SMTP server, configured for the whole process through the environment."""
    for key, value in smtp_server.settings().items():
        monkeypatch.setenv(f"CSHARE_{key.upper()}", str(value))
    get_settings.cache_clear()
    yield smtp_server
    monkeypatch.undo()
    get_settings.cache_clear()
