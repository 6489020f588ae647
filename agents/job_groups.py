"""The process groups of the jobs an agent runs, kept in a file so none outlives it.

Every job runs in its own process group (and, where cgroup v2 is delegated, its own
cgroup), led by its reaper (agents.reaper), which kills the group when the agent dies.
As a second line, the worker records each job's group here while it runs:

    <agent home>/jobs/<key>.json   {"<flow run id>": {"pgid", "start", "cgroup",
                                                      "agent_pid", "agent_start"}}

one file per worker identity (API URL, pool, worker name: two agents sharing a home do
not see each other's jobs), written atomically, 0600. A starting worker kills what a
dead agent left there before it takes work: a group whose leader still runs with the
recorded start time (`/proc/<pid>/stat`, so a recycled pid is never killed), and the
recorded cgroup (`cgroup.kill`). A record whose agent is alive and is not this process
(the same identity started twice) is left alone. Standard library only; Linux.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agents.limits import CgroupV2

__all__ = ["JobGroup", "JobGroups", "process_start_time"]

log = logging.getLogger("cshare.agent.jobs")


def process_start_time(pid: int, proc: Path = Path("/proc")) -> int | None:
    """When `pid` started (clock ticks since boot, /proc/<pid>/stat field 22), or None
    when it does not run."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its end.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class JobGroup:
    pgid: int
    start: int  # the group leader's start time
    cgroup: str | None
    agent_pid: int
    agent_start: int


class JobGroups:
    """The record of one worker's running jobs."""

    def __init__(self, path: Path, proc: Path = Path("/proc")) -> None:
        self.path = path
        self.proc = proc

    @classmethod
    def for_worker(cls, base: Path, api_url: str, pool: str, worker: str) -> JobGroups:
        key = hashlib.sha256(f"{api_url.rstrip('/')}\n{pool}\n{worker}".encode()).hexdigest()
        return cls(base / "jobs" / f"{key[:24]}.json")

    # -- the file --------------------------------------------------------------------

    def load(self) -> dict[str, JobGroup]:
        try:
            data: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("job record %s is unreadable (%s); ignoring it", self.path, exc)
            return {}
        groups: dict[str, JobGroup] = {}
        for name, entry in data.items() if isinstance(data, dict) else ():
            with contextlib.suppress(KeyError, TypeError, ValueError):
                groups[str(name)] = JobGroup(
                    pgid=int(entry["pgid"]),
                    start=int(entry["start"]),
                    cgroup=str(entry["cgroup"]) if entry.get("cgroup") else None,
                    agent_pid=int(entry["agent_pid"]),
                    agent_start=int(entry["agent_start"]),
                )
        return groups

    def _save(self, groups: dict[str, JobGroup]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".jobs-", dir=self.path.parent)  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({k: asdict(v) for k, v in groups.items()}, fh)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def record(
        self, name: str, pgid: int, cgroup: str | None = None, *, agent_pid: int | None = None
    ) -> JobGroup | None:
        """Note that job `name` runs as process group `pgid` (its leader's pid), for
        this agent (`agent_pid`: another's). None when the leader is gone already."""
        start = process_start_time(pgid, self.proc)
        agent = agent_pid or os.getpid()
        if start is None:
            return None
        group = JobGroup(pgid, start, cgroup, agent, process_start_time(agent, self.proc) or 0)
        groups = self.load()
        groups[name] = group
        self._save(groups)
        return group

    def forget(self, name: str) -> None:
        groups = self.load()
        if groups.pop(name, None) is not None:
            self._save(groups)

    # -- leftovers -------------------------------------------------------------------

    def _alive(self, pid: int, start: int) -> bool:
        return process_start_time(pid, self.proc) == start

    def kill_leftovers(self) -> list[str]:
        """Kill the recorded groups of agents that are gone, then forget them; the names
        of the jobs killed. Records of a live agent other than this process are kept."""
        groups = self.load()
        if not groups:
            return []
        me = os.getpid()
        killed: list[str] = []
        keep: dict[str, JobGroup] = {}
        for name, group in groups.items():
            if group.agent_pid != me and self._alive(group.agent_pid, group.agent_start):
                keep[name] = group  # its agent still runs: its job, not a leftover
                continue
            if kill_group(group, self._alive(group.pgid, group.start)):
                killed.append(name)
        self._save(keep)
        return killed


def kill_group(group: JobGroup, leader_verified: bool) -> bool:
    """SIGKILL everything of a job: its cgroup (if any) and, when its leader is
    verified to be the recorded process, its process group. True if anything was hit."""
    hit = False
    if group.cgroup:
        hit = CgroupV2.kill(group.cgroup)
    if leader_verified:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group.pgid, signal.SIGKILL)
            hit = True
    return hit
