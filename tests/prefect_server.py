"""Pytest plugin: a real Prefect server per test session (per xdist worker) and workers.

Fixtures:
- `prefect_server` (session): a `prefect server start` subprocess on a free port with its
  own PREFECT_HOME and SQLite file, protected by a generated auth string. Yields a
  `PrefectServer` (`api_url`, `auth_string`, `home`, `pid`, `log_path`, `client_env()`).
- `prefect_gateway` (session): a `flows.gateway.PrefectGateway` for that server.
- `prefect_worker` (function): a factory; `with prefect_worker("pool") as worker:` runs a
  real `prefect worker start --type process` subprocess polling every second
  (`start_worker(server, pool, log_dir)` is the same for fixtures of wider scope).
- `prefect_client` (function): points this process's Prefect client at the server, so
  flows called in-process report to it (and not to an ephemeral server).

Tests using these should carry `@pytest.mark.prefect` and `@pytest.mark.xdist_group("prefect")`
so that, under `--dist loadgroup`, one worker starts one server for all of them.
Processes are stopped by PID: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.cli.up.processes import descendants
from flows.gateway import FlowRunInfo, PrefectGateway

VENV_BIN = Path(sys.executable).parent
PREFECT = str(VENV_BIN / "prefect")
REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT_S = 90.0
WORKER_START_TIMEOUT_S = 60.0
# Prefect's SQLite server stops answering now and then on a loaded 2-core machine: a
# write lock held through its own 60 s busy timeout, or a state proposal lost to
# "database is locked" that only its cancellation clean-up repairs. Waits for an
# outcome that needs Prefect allow for that much on top of the normal time; how fast
# something happened is checked from Prefect's own timestamps, which a stall does not move.
PREFECT_STALL_S = 150


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too so `--strict-markers` passes with `-p no:xdist`.
    config.addinivalue_line("markers", "prefect: needs the session's real Prefect server")
    config.addinivalue_line("markers", "xdist_group(name): run in one xdist worker")


@dataclass(frozen=True)
class PrefectServer:
    api_url: str  # e.g. http://127.0.0.1:PORT/api
    auth_string: str
    home: Path
    pid: int
    log_path: Path
    start_seconds: float = 0.0  # how long start-up took, for the curious

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment for a Prefect client subprocess (worker, CLI, flow) of this server."""
        env = _clean_env()
        client_home = self.home / "client"
        client_home.mkdir(exist_ok=True)
        env.update(
            PREFECT_HOME=str(client_home),
            PREFECT_API_URL=self.api_url,
            PREFECT_API_AUTH_STRING=self.auth_string,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_CLI_PROMPT="false",
        )
        env.update(extra)
        return env


@dataclass
class WorkerProcess:
    pool: str
    name: str
    pid: int
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _clean_env() -> dict[str, str]:
    # A developer's PREFECT_API_URL / profile must never leak into the test stack.
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """Stop a process we started, by PID; then any descendants it left behind, by PID."""
    leftovers = descendants(process.pid) if sys.platform == "linux" else []
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace_s)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid in leftovers if _signal(pid, sig)]
        deadline = time.monotonic() + grace_s / 2
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if Path(f"/proc/{pid}").exists()]
            time.sleep(0.1)
        if not alive:
            return


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _start_server(
    home: Path, database_url: str | None = None
) -> tuple[subprocess.Popen[bytes], PrefectServer]:
    """`database_url`: Prefect's own database (SQLAlchemy async URL); default a SQLite
    file under `home`."""
    auth_string = secrets.token_urlsafe(24)
    server_home = home / "server"
    server_home.mkdir(parents=True, exist_ok=True)
    env = _clean_env()
    env.update(
        PREFECT_HOME=str(server_home),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=database_url
        or f"sqlite+aiosqlite:///{server_home}/prefect.db",
        PREFECT_SERVER_API_AUTH_STRING=auth_string,
        # SQLite: the late-runs service fights request handlers for the write lock.
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # No UI bundle to copy at start-up; tests only build UI links.
        PREFECT_SERVER_UI_ENABLED="false",
        # Events (our "changed since" feed) land within ~1 s instead of 5.
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL="1",
        PREFECT_LOGGING_SERVER_LEVEL="WARNING",
    )
    last_error = ""
    for _ in range(3):  # a port picked free can be taken before the server binds it
        port = _free_port()
        log_path = server_home / f"server-{port}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=server_home,
            )
        api_url = f"http://127.0.0.1:{port}/api"
        started = time.monotonic()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    server = PrefectServer(
                        api_url,
                        auth_string,
                        home,
                        process.pid,
                        log_path,
                        start_seconds=time.monotonic() - started,
                    )
                    return process, server
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        last_error = _tail(log_path)
        _stop(process)
    raise RuntimeError(f"Prefect server did not become healthy:\n{last_error}")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    home = tmp_path_factory.mktemp("prefect")
    process, server = _start_server(home)
    try:
        yield server
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def prefect_gateway(prefect_server: PrefectServer) -> Iterator[PrefectGateway]:
    gateway = PrefectGateway(prefect_server.api_url, prefect_server.auth_string)
    try:
        yield gateway
    finally:
        gateway.close()


@contextlib.contextmanager
def start_worker(
    server: PrefectServer,
    pool: str,
    log_dir: Path,
    *,
    worker_type: str = "process",
    prefetch_seconds: int = 10,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[WorkerProcess]:
    """A real `prefect worker start` subprocess polling `pool` every second.

    Yields once the worker has registered with the pool; stops it (and any flow-run
    processes it left behind) by PID on exit. Usable from fixtures of any scope.
    """
    name = f"test-worker-{uuid.uuid4().hex[:8]}"
    log_path = log_dir / f"{name}.log"
    worker_env = server.client_env(
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS=str(prefetch_seconds),
        PREFECT_WORKER_HEARTBEAT_SECONDS="5",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    worker_env.update(env or {})
    args = [PREFECT, "worker", "start", "--pool", pool, "--type", worker_type]
    args += ["--name", name, "--prefetch-seconds", str(prefetch_seconds), *extra_args]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            args, env=worker_env, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT
        )
    worker = WorkerProcess(pool, name, process.pid, log_path, process)
    try:
        _wait_for_worker(server, worker)
        yield worker
    finally:
        _stop(process)


@pytest.fixture
def prefect_worker(
    prefect_server: PrefectServer, tmp_path: Path
) -> Iterator[Callable[..., contextlib.AbstractContextManager[WorkerProcess]]]:
    """`with prefect_worker("pool", prefetch_seconds=..., env=...) as worker:` (see
    `start_worker`); each worker is stopped when its block ends."""

    def start(pool: str, **kwargs: Any) -> contextlib.AbstractContextManager[WorkerProcess]:
        return start_worker(prefect_server, pool, tmp_path, **kwargs)

    yield start


def _wait_for_worker(server: PrefectServer, worker: WorkerProcess) -> None:
    """Until the worker has registered itself with the pool (its first heartbeat)."""
    headers = {"Authorization": "Basic " + _b64(server.auth_string)}
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{_tail(worker.log_path)}")
        try:
            response = httpx.post(
                f"{server.api_url}/work_pools/{worker.pool}/workers/filter",
                json={},
                headers=headers,
                timeout=5,
            )
            if response.status_code == 200 and any(
                w["name"] == worker.name for w in response.json()
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"worker did not register in time:\n{_tail(worker.log_path)}")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def prefect_client(prefect_server: PrefectServer) -> Iterator[dict[str, Any]]:
    """Run in-process flows against the test server (instead of an ephemeral one)."""
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    client_home = prefect_server.home / "client"
    client_home.mkdir(exist_ok=True)
    updates: dict[Any, Any] = {
        PREFECT_API_URL: prefect_server.api_url,
        PREFECT_API_AUTH_STRING: prefect_server.auth_string,
        PREFECT_HOME: str(client_home),
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
    }
    with temporary_settings(updates=updates):
        try:
            yield {"api_url": prefect_server.api_url, "auth_string": prefect_server.auth_string}
        finally:
            # Ship queued logs and events while the server is still up: otherwise the
            # interpreter's exit hook retries them against a stopped server for a minute.
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)


def wait_for_runs(
    gateway: PrefectGateway,
    ids: list[uuid.UUID],
    done: Callable[[FlowRunInfo], bool] = lambda run: run.is_final,
    timeout_s: float = 60.0 + PREFECT_STALL_S,
) -> dict[uuid.UUID, FlowRunInfo]:
    """Poll until `done` holds for every run (default: a final state); the last reads."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = {run.id: run for run in gateway.read_flow_runs(ids)}
        if len(runs) == len(set(ids)) and all(done(run) for run in runs.values()):
            return runs
        if time.monotonic() > deadline:
            states = {str(i): (r.state_type, r.state_name) for i, r in runs.items()}
            raise TimeoutError(f"runs not done after {timeout_s} s: {states}")
        time.sleep(0.5)
