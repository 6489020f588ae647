"""The stack's children: start, watch and stop them by PID (Linux /proc for descendants
and PID reuse), and the checks around their start (free ports, readiness)."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from api.cli.up.childlogs import ChildLog
from api.cli.up.errors import StackError

STOP_TIMEOUT_S: Final = 15.0


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to detect PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _stat_fields() -> dict[int, list[str]]:
    """Each process's /proc/<pid>/stat fields after the command name (Linux)."""
    found: dict[int, list[str]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        found[int(entry.name)] = stat.rsplit(")", 1)[1].split()
    return found


def group_members(pgid: int) -> list[int]:
    """PIDs in process group `pgid` (Linux /proc): what a child left in its session."""
    return [pid for pid, fields in _stat_fields().items() if int(fields[2]) == pgid]


def descendants(pid: int) -> list[int]:
    """PIDs of all living descendants of `pid` (Linux /proc), parents before children."""
    children: dict[int, list[int]] = {}
    for child, fields in _stat_fields().items():
        children.setdefault(int(fields[1]), []).append(child)
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


# Run between the fork and the real program, instead of a `preexec_fn` (unsafe once the
# supervisor has log reader threads): ask for SIGTERM when the supervisor dies, give up if
# it already has (the request would come too late), then exec the child (PDEATHSIG stays).
_EXEC_WITH_PDEATHSIG: Final = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL(None,use_errno=True).prctl(1,signal.SIGTERM)\n"
    "if os.getppid()!=int(sys.argv[1]):os._exit(70)\n"
    "os.execv(sys.argv[2],sys.argv[2:])\n"
)


def with_parent_death_signal(args: Sequence[str]) -> list[str]:
    if sys.platform != "linux":
        return list(args)
    # -I -S: stdlib only, no site packages: the hop costs ~20 ms.
    return [sys.executable, "-I", "-S", "-c", _EXEC_WITH_PDEATHSIG, str(os.getpid()), *args]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: ChildLog
    started: int | None = None
    known: dict[int, int | None] = field(default_factory=dict)  # descendant pid -> start

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.log.path

    def remember_descendants(self) -> None:
        for pid in descendants(self.pid):
            if pid not in self.known:
                self.known[pid] = start_time(pid)

    def exited(self) -> bool:
        """Whether the child has exited, without reaping it: until it is reaped its PID,
        and so its process group's id, cannot be reused (see `stop_child`)."""
        if self.process.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.process.poll() is not None
        return info is not None

    def wait_exited(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def tail(self, lines: int = 30) -> str:
        return self.log.tail(lines)


def as_user(user: str | None) -> dict[str, Any]:
    """Popen's arguments to run as `user` with that user's own group only (keeping
    root's groups would let group bits decide what it may reach)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def spawn(
    name: str,
    args: Sequence[str],
    *,
    env: dict[str, str],
    log: ChildLog,
    cwd: Path,
    user: str | None = None,
) -> Child:
    """Start a child in its own session, its output going to `log`. Call it from the
    main thread only: the parent-death signal fires when the spawning thread ends."""
    # As another user the hop through our interpreter may not even be readable; that
    # child (the embedded PostgreSQL) is cleaned up at the next start instead.
    process = subprocess.Popen(
        list(args) if user else with_parent_death_signal(args),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **as_user(user),
    )
    assert process.stdout is not None
    log.follow(process.stdout, name)
    return Child(name, process, log, started=start_time(process.pid))


def stop_child(child: Child, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, wait, SIGKILL; then every recorded descendant and member of the child's
    process group still alive, by PID. Also cleans up after a child that exited by itself.
    The child's exit code."""
    child.remember_descendants()
    if not child.exited():
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
        if not child.wait_exited(timeout_s):
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            child.wait_exited(timeout_s)
    if child.process.returncode is None:
        # Not reaped yet, so the group id is still ours: its members are the child's.
        for pid in group_members(child.pid):
            if pid != child.pid:
                child.known.setdefault(pid, start_time(pid))
    code = child.process.wait()
    _stop_leftovers(child, timeout_s)
    return code


def _stop_leftovers(child: Child, timeout_s: float) -> None:
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
