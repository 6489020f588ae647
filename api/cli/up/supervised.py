"""One supervised child of the stack: how to start it again, its restarts and its status
(see api.cli.up)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from api.cli.up.childlogs import ChildLog
from api.cli.up.processes import Child, spawn, stop_child
from api.cli.up.restarts import Backoff, RestartPolicy
from api.cli.up.status import ChildState, ChildStatus, iso, utcnow


@dataclass(frozen=True)
class ChildSpec:
    name: str  # key in the status file and stack.pid: prefect, api, agent
    title: str  # for people: "Prefect server"
    args: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    user: str | None = None  # run as this system user (root only: the embedded PostgreSQL)


class Supervised:
    """A child and its restarts. Driven from the supervisor's main thread only."""

    def __init__(self, spec: ChildSpec, policy: RestartPolicy) -> None:
        self.spec = spec
        self.log = ChildLog(spec.log_path)
        self.backoff = Backoff(policy)
        self.child: Child | None = None
        self.state = ChildState.STOPPED
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.last_exit_at: datetime | None = None
        self._started_at: datetime | None = None
        self._started_mono = 0.0
        self._restart_at_mono: float | None = None
        self._restart_at: datetime | None = None

    def start(self) -> Child:
        self.child = spawn(
            self.spec.title,
            self.spec.args,
            env=self.spec.env,
            log=self.log,
            cwd=self.spec.cwd,
            user=self.spec.user,
        )
        self.state = ChildState.RUNNING
        self._started_at = utcnow()
        self._started_mono = time.monotonic()
        self._restart_at_mono = self._restart_at = None
        return self.child

    def tick(self, say: Callable[[str], None]) -> bool:
        """Notice an exit (schedule the restart) or a restart that is due (start it).
        Whether anything changed."""
        now = time.monotonic()
        child = self.child
        if self.state is ChildState.RUNNING and child is not None:
            child.remember_descendants()
            if not child.exited():
                return False
            self._on_exit(child, now, say)
            return True
        if self.state is ChildState.RESTARTING and self._restart_at_mono is not None:
            if now < self._restart_at_mono:
                return False
            try:
                started = self.start()
            except OSError as exc:  # e.g. out of file descriptors: try again later
                delay = self._schedule_restart(now, up_for_s=0.0)
                say(f"{self.spec.title} could not be started ({exc}); retrying in {delay:g} s.")
                return True
            self.restarts += 1
            say(f"{self.spec.title} restarted (pid {started.pid}, restart {self.restarts}).")
            return True
        return False

    def _schedule_restart(self, now: float, *, up_for_s: float) -> float:
        delay = self.backoff.on_exit(up_for_s=up_for_s, now=now)
        self.state = ChildState.RESTARTING
        self._restart_at_mono = now + delay
        self._restart_at = utcnow() + timedelta(seconds=delay)
        return delay

    def _on_exit(self, child: Child, now: float, say: Callable[[str], None]) -> None:
        code = stop_child(child)  # reaps it and whatever it left behind in its group
        self.last_exit_code = code
        self.last_exit_at = utcnow()
        was_looping = self.backoff.crash_looping(now)
        delay = self._schedule_restart(now, up_for_s=now - self._started_mono)
        say(
            f"{self.spec.title} exited (code {code}); restarting in {delay:g} s "
            f"(restart {self.restarts + 1})."
        )
        if self.backoff.crash_looping(now) and not was_looping:
            policy = self.backoff.policy
            say(
                f"!!! {self.spec.title} keeps crashing: {self.backoff.recent_exits(now)} exits "
                f"within {policy.crash_loop_window_s:g} s. Still retrying, at most every "
                f"{policy.max_delay_s:g} s. Its log {self.log.path} ends with:\n"
                f"{self.log.tail()}"
            )

    def stop(self) -> None:
        """Stop the child for good (no restart follows)."""
        self._restart_at_mono = self._restart_at = None
        if self.child is not None and self.state is ChildState.RUNNING:
            self.last_exit_code = stop_child(self.child)
            self.last_exit_at = utcnow()
        self.state = ChildState.STOPPED

    def close(self) -> None:
        self.log.close()

    @property
    def pid(self) -> int | None:
        if self.child is None or self.state is not ChildState.RUNNING:
            return None
        return self.child.pid

    def status(self) -> ChildStatus:
        running = self.state is ChildState.RUNNING
        return ChildStatus(
            name=self.spec.name,
            title=self.spec.title,
            state=self.state,
            pid=self.pid,
            started_at=iso(self._started_at) if running and self._started_at else None,
            restarts=self.restarts,
            last_exit_code=self.last_exit_code,
            last_exit_at=iso(self.last_exit_at) if self.last_exit_at else None,
            restart_at=iso(self._restart_at) if self._restart_at else None,
            crash_loop=self.backoff.crash_looping(time.monotonic()),
            log=str(self.log.path),
        )
