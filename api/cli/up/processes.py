"""The stack's children: start, watch and stop them by PID (Linux /proc for descendants
and PID reuse), and the checks around their start (free ports, readiness)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx

from api.cli.up.errors import StackError

STOP_TIMEOUT_S: Final = 15.0
_PR_SET_PDEATHSIG: Final = 1


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to detect PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def descendants(pid: int) -> list[int]:
    """PIDs of all living descendants of `pid` (Linux /proc), parents before children."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def alive(pid: int, started: int | None = None) -> bool:
    """Whether `pid` runs (and is the same process, when its start time is given)."""
    now = start_time(pid)
    if now is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return sys.platform != "linux"
    # A zombie has exited; it only waits for its parent to reap it.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state == "Z":
        return False
    return started is None or now == started


def _child_setup() -> None:
    # Runs in the child between fork and exec: die with the supervisor (Linux).
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started: int | None = None
    known: dict[int, int | None] = field(default_factory=dict)  # descendant pid -> start

    @property
    def pid(self) -> int:
        return self.process.pid

    def remember_descendants(self) -> None:
        for pid in descendants(self.pid):
            if pid not in self.known:
                self.known[pid] = start_time(pid)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str, args: Sequence[str], *, env: dict[str, str], log_path: Path, cwd: Path
) -> Child:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            list(args),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup,  # the supervisor runs no other threads
        )
    return Child(name, process, log_path, started=start_time(process.pid))


def stop_child(child: Child, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait, SIGKILL; then every recorded descendant still alive, by PID."""
    child.remember_descendants()
    if child.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
        try:
            child.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            child.process.wait(timeout=timeout_s)
    leftovers = dict(child.known)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        living = [pid for pid, start in leftovers.items() if alive(pid, start)]
        if not living:
            return
        for pid in living:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s / 3
        while time.monotonic() < deadline and any(alive(p, leftovers[p]) for p in living):
            time.sleep(0.1)


def check_port(host: str, port: int, *, what: str, flag: str, env: str) -> None:
    """Fail with a clear message when `port` cannot be bound (someone listens on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As uvicorn does: a port in TIME_WAIT is free, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(
                f"Port {port} on {host} is already in use, so {what} cannot start "
                f"({exc.strerror}). Stop whatever uses it, or pick another port with "
                f"{flag} N (or the {env} setting)."
            ) from None


def clean_env() -> dict[str, str]:
    # A developer's PREFECT_* profile must not leak into the embedded stack.
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def wait_until(
    check: Callable[[], bool], *, timeout_s: float, child: Child | None, what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child is not None and child.process.poll() is not None:
            raise StackError(
                f"{what} exited during start-up (code {child.process.returncode}); its log "
                f"{child.log_path} ends with:\n{child.tail()}"
            )
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    log = f" See {child.log_path}." if child is not None else ""
    raise StackError(f"{what} did not become ready within {timeout_s:.0f} s.{log}")
