"""What several benchmarks share: a free port (the test suite's), a server process
started and stopped, and the API itself run that way."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.prefect_server import _free_port as free_port

__all__ = ["api_env", "api_server", "free_port", "process", "wait_http"]


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1.0)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout_s} s")


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], ready_url: str) -> Iterator[int]:
    """Run `args` until the block ends (stopped by its PID); yields the PID once
    `ready_url` answers."""
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=Path.cwd()
    )
    try:
        wait_http(ready_url, proc)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def api_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a benchmark's API: its own home, no background loops, cheap
    password hashing, our code importable."""
    return {
        **os.environ,
        **extra,
        "CSHARE_HOME": str(home),
        "CSHARE_DISPATCHER_ENABLED": "false",
        "CSHARE_NOTIFICATIONS_ENABLED": "false",
        "CSHARE_ARGON2_TIME_COST": "1",
        "CSHARE_ARGON2_MEMORY_KIB": "1024",
        "PYTHONPATH": str(Path.cwd()),
    }


@contextlib.contextmanager
def api_server(env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """`uvicorn api.app:create_app` on a free port until the block ends; yields its URL
    and PID."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "api.app:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with process(args, env, url + "/healthz") as pid:
        yield url, pid
