"""A real Google Cloud Storage endpoint for the tests: `gcp-storage-emulator` (PyPI) in
its own process on 127.0.0.1, in memory, one per test session (per xdist worker),
stopped by PID. It speaks GCS's JSON API without authentication.

Missing (not installed): the tests skip with the reason, except under CI=true where
they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def _command() -> str | None:
    beside = Path(sys.executable).with_name("gcp-storage-emulator")
    return str(beside) if beside.exists() else shutil.which("gcp-storage-emulator")


def _free_port() -> int:
    # The emulator cannot report a kernel-chosen port: take one, then hand it over.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[str]:
    """`http://127.0.0.1:<port>` of a running GCS emulator."""
    command = _command()
    if command is None:
        reason = "gcp-storage-emulator is not installed (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(reason + " (CI=true requires it)")
        pytest.skip(reason)
    port = _free_port()
    process = subprocess.Popen(
        [command, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/storage/v1/b", timeout=2)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the GCS emulator did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def gcs_bucket(gcs_endpoint: str) -> str:
    """A fresh, empty bucket on the session's emulator."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    httpx.post(f"{gcs_endpoint}/storage/v1/b", json={"name": name}, timeout=10).raise_for_status()
    return name
