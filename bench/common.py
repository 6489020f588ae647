"""What several benchmarks share: a free port (the test suite's), and a server process
started and stopped."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.prefect_server import _free_port as free_port

__all__ = ["free_port", "process", "wait_http"]


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
