"""`CSHARE_HOME/stack.status.json`: what the supervisor knows of its children, kept current
by the supervisor and read by `cshare up --status` (see api.cli.up)."""

from __future__ import annotations

import enum
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from api.cli.up.errors import StackError
from api.cli.up.processes import alive

STATUS_FILE: Final = "stack.status.json"


class ChildState(enum.StrEnum):
    RUNNING = "running"
    RESTARTING = "restarting"  # exited; waiting out the backoff before the next start
    STOPPED = "stopped"


class StackState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass
class ChildStatus:
    name: str  # stable key: prefect, api, agent
    title: str  # for people: "Prefect server"
    state: ChildState
    pid: int | None = None
    started_at: str | None = None  # ISO UTC, of the current run
    restarts: int = 0
    last_exit_code: int | None = None  # negative: killed by that signal
    last_exit_at: str | None = None
    restart_at: str | None = None  # when RESTARTING
    crash_loop: bool = False
    log: str = ""

    def uptime_s(self, now: datetime) -> float | None:
        if self.state is not ChildState.RUNNING or self.started_at is None:
            return None
        return max(0.0, (now - datetime.fromisoformat(self.started_at)).total_seconds())


@dataclass
class StackStatus:
    supervisor_pid: int
    supervisor_started: int | None  # /proc start time: a recycled PID is not the stack
    state: StackState
    updated_at: str
    children: list[ChildStatus] = field(default_factory=list)

    def supervisor_alive(self) -> bool:
        return self.state is not StackState.STOPPED and alive(
            self.supervisor_pid, self.supervisor_started
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackStatus:
        children = [
            ChildStatus(**{**c, "state": ChildState(c["state"])}) for c in data.get("children", [])
        ]
        return cls(
            supervisor_pid=int(data["supervisor_pid"]),
            supervisor_started=data.get("supervisor_started"),
            state=StackState(data["state"]),
            updated_at=str(data["updated_at"]),
            children=children,
        )

    def report(self, now: datetime | None = None) -> dict[str, Any]:
        """The file's content plus what a reader computes: liveness and uptimes (none once
        the supervisor is gone: its children went with it)."""
        now = now or utcnow()
        data = self.to_json()
        running = data["supervisor_running"] = self.supervisor_alive()
        for child, raw in zip(self.children, data["children"], strict=True):
            raw["uptime_s"] = child.uptime_s(now) if running else None
        return data


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def write_status(home: Path, status: StackStatus) -> None:
    """Replace the file atomically: a reader never sees half of it."""
    target = home / STATUS_FILE
    fd, tmp = tempfile.mkstemp(prefix=".stack.status.", dir=home)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(status.to_json(), fh, indent=2)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(home: Path) -> StackStatus | None:
    """The last status written under `home`, or None when no stack ever wrote one."""
    path = home / STATUS_FILE
    try:
        return StackStatus.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{path} is not a status file `cshare up` wrote ({exc}).") from None
