"""`cshare services`: Prefect's background services and Compute Share's background loops
in one process, of which one is meant to run per deployment.

A second copy is harmless. Prefect's services (scheduler, late runs, event persister,
triggers, ...) start only once this process holds `pg_try_advisory_lock(SERVICES_LOCK)`
on Prefect's database; until then it stands by and retries. The lock lives as long as
the holding connection: when the holder dies (even kill -9) PostgreSQL releases it and a
standby takes over within a retry interval. Compute Share's loops run in every copy:
the dispatcher works only while it holds its `dispatcher` lease, and the others are
safe to run in several processes (flows.wiring).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from api.cli.roles.prefect_db import SERVICES_LOCK, is_postgres, plain_dsn
from api.cli.up.prefect_env import PrefectConfig, prefect_env
from api.cli.up.processes import with_parent_death_signal

VENV_BIN: Final = Path(sys.executable).parent
STANDBY_RETRY_S: Final = 2.0
STOP_TIMEOUT_S: Final = 15.0


class ServicesLock:
    """The advisory lock that makes one `cshare services` the active one."""

    def __init__(self, database_url: str) -> None:
        import psycopg

        self._conn = psycopg.connect(plain_dsn(database_url), autocommit=True)

    def try_take(self) -> bool:
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (SERVICES_LOCK,)).fetchone()
        return bool(row and row[0])

    def alive(self) -> bool:
        """Whether the holding connection still works (lost: the lock is gone with it)."""
        try:
            self._conn.execute("SELECT 1")
        except Exception:
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


@dataclass
class ServicesProcess:
    config: PrefectConfig
    prefect: bool = True  # Prefect's background services
    loops: bool = True  # Compute Share's background loops
    say: Callable[[str], None] = print
    state: str = "starting"  # starting | standby | active | stopping
    _stop: threading.Event = field(default_factory=threading.Event)
    _child: subprocess.Popen[bytes] | None = None
    _lock: ServicesLock | None = None
    _loops: list[Any] = field(default_factory=list)

    def stop(self, *_args: object) -> None:
        self._stop.set()

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.stop)
        try:
            if self.loops:
                self._start_loops()
            return self._supervise()
        finally:
            self.state = "stopping"
            self._stop_child()
            for service in reversed(self._loops):
                service.stop()
            if self._lock is not None:
                self._lock.close()

    def health(self) -> dict[str, Any]:
        loops = [
            {
                "name": h.name,
                "enabled": h.enabled,
                "running": h.running,
                "consecutive_failures": h.consecutive_failures,
                "last_error": h.last_error,
            }
            for h in (s.health() for s in self._loops)
        ]
        child = self._child
        return {
            "state": self.state,
            "prefect_services_pid": child.pid if child and child.poll() is None else None,
            "services": loops,
        }

    # -- pieces -----------------------------------------------------------------------

    def _start_loops(self) -> None:
        # The API process's loops, built the same way (api.app's lifespan).
        from flows import wiring
        from flows.prefect_access import gateway_from_settings
        from orgs import migrate
        from orgs.config import get_settings
        from orgs.db import Database

        settings = get_settings()
        db = Database(settings.resolved_database_url())
        migrate.upgrade(db.engine)
        wiring.wire_hooks()
        self._loops = wiring.services(db, gateway_from_settings(settings), settings)
        for service in self._loops:
            service.start()
        self.say(f"Compute Share loops started: {', '.join(s.name for s in self._loops)}")

    def _supervise(self) -> int:
        while not self._stop.is_set():
            if self.prefect and self._child is None and self._may_start_prefect():
                self._start_child()
            if self._child is not None:
                code = self._child.poll()
                if code is not None:
                    self.say(f"Prefect's services exited with code {code}")
                    return code or 1
                if self._lock is not None and not self._lock.alive():
                    self.say("Lost the connection holding the services lock: stopping")
                    return 1
            if not self.prefect and self.state == "starting":
                self.state = "active"
            self._stop.wait(STANDBY_RETRY_S)
        return 0

    def _may_start_prefect(self) -> bool:
        if not is_postgres(self.config.database_url):
            return True  # SQLite: one host, nothing to share
        if self._lock is None:
            self._lock = ServicesLock(self.config.database_url)
        if self._lock.try_take():
            return True
        if self.state != "standby":
            self.say(
                "Another `cshare services` runs Prefect's services (it holds the lock): "
                "standing by to take over"
            )
            self.state = "standby"
        return False

    def _start_child(self) -> None:
        args = [str(VENV_BIN / "prefect"), "server", "services", "start"]
        self.config.home.mkdir(parents=True, exist_ok=True)
        self._child = subprocess.Popen(
            with_parent_death_signal(args),
            env=prefect_env(self.config),
            cwd=self.config.home,
            stdin=subprocess.DEVNULL,
        )
        self.state = "active"
        self.say(f"Prefect's services started (pid {self._child.pid})")

    def _stop_child(self) -> None:
        child = self._child
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(STOP_TIMEOUT_S)


def serve_health(process: ServicesProcess, host: str, port: int) -> ThreadingHTTPServer:
    """`GET /healthz` on host:port: 200 with the state while active or standing by."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/healthz":
                self.send_error(404)
                return
            report = process.health()
            failing = any(s["enabled"] and not s["running"] for s in report["services"])
            body = json.dumps(report).encode()
            self.send_response(503 if failing or report["state"] == "stopping" else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass  # probes every few seconds: not worth a line each

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="services-health", daemon=True).start()
    return server
