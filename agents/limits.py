"""Limits a flow-run process lives under on a member's machine (standard library only).

This module is imported by the flow-run process itself (see `agents.engine_host`)
before Prefect is, so it must stay cheap and import nothing of ours or Prefect's.

- **Memory**: cgroup v2 where the machine delegates a writable cgroup to the agent
  (`memory.max` on a per-run cgroup; the kernel's OOM killer enforces it and
  `memory.events` tells us it did), otherwise `RLIMIT_DATA` on the process (heap and
  anonymous mappings: what Python allocates; an allocation past it raises MemoryError).
  `RLIMIT_AS` would also count address space merely reserved (thread stacks, malloc
  arenas), which fails a Prefect engine long before it uses its memory; it is only the
  fallback where `RLIMIT_DATA` is missing.
- **Lifetime**: the process dies with its parent (`PR_SET_PDEATHSIG`): the job's reaper
  (agents.reaper), which kills the job's whole process group and cgroup when the agent
  dies, so a killed agent never leaves orphans running a job the control plane has
  declared crashed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "RLIMIT_METHOD",
    "CgroupV2",
    "MemoryLimit",
    "apply_rlimit",
    "die_with_parent",
    "memory_failure_message",
    "runtime_failure_message",
]

_PR_SET_PDEATHSIG: Final = 1
MB: Final = 1024 * 1024
RLIMIT_METHOD: Final = "RLIMIT_DATA" if hasattr(resource, "RLIMIT_DATA") else "RLIMIT_AS"


@dataclass(frozen=True, slots=True)
class MemoryLimit:
    """How a run's memory is capped: `method` is 'cgroup v2' or an rlimit's name."""

    memory_mb: int
    method: str
    cgroup: str | None = None  # the run's cgroup directory, for the cgroup method


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send `sig` (SIGKILL) to this process when its parent dies (no-op
    elsewhere). Linux sends it when the parent *thread* that forked us exits.

    `parent_pid`: the parent we expect; if it already died before the request took
    effect (we were re-parented), exit now instead of running as an orphan.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent_pid and os.getppid() != parent_pid:
        os._exit(1)


def apply_rlimit(memory_mb: int) -> MemoryLimit:
    """Cap this process's data segment (or address space) at `memory_mb`."""
    limit = memory_mb * MB
    which = getattr(resource, RLIMIT_METHOD)
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)  # an unprivileged process cannot raise its hard limit
    resource.setrlimit(which, (limit, limit))
    return MemoryLimit(memory_mb, RLIMIT_METHOD)


def memory_failure_message(limit: MemoryLimit, detail: str | None = None) -> str:
    text = f"Flow run exceeded its memory limit of {limit.memory_mb} MB ({limit.method})."
    return f"{text} {detail}" if detail else text


def runtime_failure_message(max_runtime_s: int) -> str:
    return f"Flow run exceeded max runtime {max_runtime_s} s and was stopped."


class CgroupV2:
    """Per-run memory cgroups under the cgroup this agent was started in.

    Needs a delegated, writable cgroup v2 subtree (e.g. `systemd-run --user -p
    Delegate=yes --scope cshare agent start`, or a container with its own cgroup
    namespace). Layout, because cgroup v2 forbids processes in a cgroup whose
    controllers are enabled for its children:

        <base>/                 memory enabled in cgroup.subtree_control
        <base>/agent/           the agent itself moves here
        <base>/run-<id>/        one per run, memory.max = the job's limit

    `root` and `proc_self_cgroup` are parameters so tests can use a fake tree.
    """

    def __init__(
        self,
        root: Path = Path("/sys/fs/cgroup"),
        proc_self_cgroup: Path = Path("/proc/self/cgroup"),
    ) -> None:
        self.root = root
        self.proc_self_cgroup = proc_self_cgroup
        self.base: Path | None = None

    def _own_cgroup(self) -> Path | None:
        try:
            lines = self.proc_self_cgroup.read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            if line.startswith("0::"):  # the unified (v2) hierarchy
                return self.root / line[3:].lstrip("/")
        return None

    def setup(self) -> bool:
        """Prepare the layout; False (and nothing changed) when cgroup v2 is unusable."""
        own = self._own_cgroup()
        if own is None:
            return False
        try:
            if "memory" not in (self.root / "cgroup.controllers").read_text().split():
                return False
            base = own.parent if own.name == "agent" else own
            agent = base / "agent"
            agent.mkdir(exist_ok=True)
            if own != agent:
                (agent / "cgroup.procs").write_text(str(os.getpid()))
            (base / "cgroup.subtree_control").write_text("+memory")
            if "memory" not in (base / "cgroup.subtree_control").read_text().split():
                return False
        except OSError:
            return False
        self.base = base
        return True

    def create_run(self, name: str, memory_mb: int) -> MemoryLimit:
        if self.base is None:
            raise RuntimeError("cgroup v2 is not set up")
        path = self.base / f"run-{name}"
        path.mkdir(exist_ok=True)
        (path / "memory.max").write_text(str(memory_mb * MB))
        # No swap: the limit is real memory, not memory plus disk.
        with contextlib.suppress(OSError):
            (path / "memory.swap.max").write_text("0")
        return MemoryLimit(memory_mb, "cgroup v2", str(path))

    @staticmethod
    def join(cgroup: str, pid: int | None = None) -> None:
        (Path(cgroup) / "cgroup.procs").write_text(str(pid or os.getpid()))

    @staticmethod
    def oom_killed(cgroup: str) -> bool:
        try:
            text = (Path(cgroup) / "memory.events").read_text()
        except OSError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value) > 0
        return False

    @staticmethod
    def kill(cgroup: str) -> bool:
        """SIGKILL every process in the cgroup (`cgroup.kill`, Linux 5.14+)."""
        try:
            (Path(cgroup) / "cgroup.kill").write_text("1")
        except OSError:
            return False
        return True

    @staticmethod
    def remove(cgroup: str) -> None:
        # It may still hold a dying process; the next run's cgroup has another name.
        with contextlib.suppress(OSError):
            Path(cgroup).rmdir()
