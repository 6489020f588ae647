"""A job's reaper: leader of the job's process group, parent of its engine process.

    agent ── reaper (this; its own session and process group) ── engine host ── the
                                                                   flow's processes

`PR_SET_PDEATHSIG` kills only a direct child, and Linux delivers it when the parent
*thread* exits. So this small process, forked by the agent's main thread, asks for
SIGUSR1 when the agent dies (kill -9 included) and answers it by killing the job's
cgroup (where it has one, `cgroup.kill`) and its whole process group with SIGKILL:
the engine, and everything the flow started that stayed in the group.

When the engine exits, it kills what the flow left running in the group. Otherwise it
is transparent: the engine host inherits its stdin (the run's spec) and
environment, signals for the job go to the group (the engine handles them; this
process ignores them), and it exits as the engine did (same code, same signal), so
the worker watches this PID as it would the engine's. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Final

from agents import limits

DEATH_SIGNAL: Final = signal.SIGUSR1
_host_pid = 0


def _host_cgroup(pid: int) -> str | None:
    """The engine's cgroup v2 when it is a run's own (agents.limits.CgroupV2)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            path = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
            return str(path) if path.name.startswith("run-") else None
    return None


def _kill_job(_signum: int = 0, _frame: FrameType | None = None) -> None:
    if _host_pid:
        cgroup = _host_cgroup(_host_pid)
        if cgroup:
            limits.CgroupV2.kill(cgroup)
    os.killpg(os.getpgid(0), signal.SIGKILL)  # this process too: nothing is left


def _kill_rest_of_group() -> None:
    """The engine is gone: kill what the flow left running in the group (while this
    process leads it, its number cannot be reused), until nothing is left."""
    me, group = os.getpid(), os.getpgid(0)
    for _round in range(20):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
                # After the command name: state, ppid, pgrp.
                state, _ppid, pgrp = stat[stat.rfind(")") + 2 :].split()[:3]
                if int(pgrp) != group or state in ("Z", "X"):
                    continue
                os.kill(int(entry), signal.SIGKILL)
                found = True
            except (OSError, ValueError, IndexError):
                continue
        if not found:
            return


def _exit_like(status: int) -> None:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # killed by a signal: die of it too
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code
    sys.stdout.flush()
    os._exit(code)


def main() -> None:
    global _host_pid
    parent = os.environ.get("CSHARE_HOST_PARENT", "")
    signal.signal(DEATH_SIGNAL, _kill_job)
    # Exits at once if the agent died before the request took effect (no job yet).
    limits.die_with_parent(int(parent) if parent.isdigit() else None, DEATH_SIGNAL)
    # The engine and the flow handle stop signals; they reach us through the group.
    # (Handlers, not SIG_IGN: a handler is reset by exec, an ignored signal would not be.)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    env = dict(os.environ, CSHARE_HOST_PARENT=str(os.getpid()))
    argv = [sys.executable, "-m", "agents.engine_host"]
    pid = os.fork()
    if pid == 0:  # the engine host: default signal handling, its stdin is the spec
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, DEATH_SIGNAL):
                signal.signal(sig, signal.SIG_DFL)
            os.execve(sys.executable, argv, env)  # noqa: S606 - our own module
        finally:
            os._exit(127)
    _host_pid = pid
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the spec is the engine's to read
    os.close(devnull)
    _pid, status, usage = os.wait4(pid, 0)
    _record_usage(usage)
    _kill_rest_of_group()
    _exit_like(status)


def _record_usage(usage: resource.struct_rusage) -> None:
    """What the engine and the processes it waited for used (CPU seconds, peak memory),
    for the worker to report with the job (`usage_path`). Never fails the job."""
    path = usage_path(os.getpid())
    if path is None:
        return
    body = {
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "max_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
    }
    with contextlib.suppress(OSError):
        path.write_text(json.dumps(body))


def usage_path(reaper_pid: int, home: str | None = None) -> Path | None:
    """Where the reaper of `reaper_pid` leaves its job's usage: the warm pool's own home
    (HOME of every reaper), which no job reads."""
    base = home if home is not None else os.environ.get("HOME")
    return Path(base) / f".usage-{reaper_pid}.json" if base else None


if __name__ == "__main__":
    main()
