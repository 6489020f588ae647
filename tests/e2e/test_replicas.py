"""Production topology in small: two API replicas (uvicorn subprocesses, dispatcher on in
both) on one PostgreSQL database, a real Prefect server and a real process worker.

Shows: every job dispatched exactly once (one flow run per job, each run once), the
concurrency limit exact across replicas, and the replica holding the dispatcher lease
killed with SIGKILL mid-way without losing a job (the other takes the lease over).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from flows.gateway import PrefectGateway, StateType
from flows.models import Job, Lease
from orgs.db import Database
from tests.integration.test_jobs_support import count_jobs, jobs_app, limits_doc, setup_org
from tests.prefect_server import PrefectServer, start_worker

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.prefect,
    pytest.mark.slow,
    pytest.mark.xdist_group("prefect"),
    pytest.mark.timeout(300),
]

ACTIVE = ["scheduled", "running", "cancelling"]
LEASE_TTL_S = 3.0
JOBS = 8
LIMIT = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Replica:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


@contextmanager
def replica(name: str, database_url: str, server: PrefectServer, tmp: Path) -> Iterator[Replica]:
    """`uvicorn api.app:create_app` as production runs it, stopped by PID at the end."""
    port = _free_port()
    home = tmp / name
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CSHARE_"))}
    env.update(
        CSHARE_HOME=str(home),
        CSHARE_DATABASE_URL=database_url,
        CSHARE_PREFECT_API_URL=server.api_url,
        CSHARE_PREFECT_AUTH_STRING=server.auth_string,
        CSHARE_DISPATCHER_ENABLED="true",
        CSHARE_DISPATCHER_INTERVAL_S="0.3",
        CSHARE_DISPATCHER_LEASE_TTL_S=str(LEASE_TTL_S),
        CSHARE_NOTIFICATIONS_ENABLED="false",
    )
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    rep = Replica(name, f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"{name} exited:\n{rep.tail()}"
            try:
                if httpx.get(f"{rep.url}/readyz", timeout=3).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{name} not ready:\n{rep.tail()}"
            time.sleep(0.3)
        yield rep
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _lease_holder_pid(db: Database) -> int | None:
    with db.session(write=False) as s:
        lease = s.scalars(select(Lease).where(Lease.name == "dispatcher")).first()
    if lease is None:
        return None
    # The holder is "<host>:<pid>:<random>" (flows.dispatch.dispatcher).
    return int(lease.holder.split(":")[1])


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_two_replicas_one_database(
    database: Database,
    prefect_server: PrefectServer,
    prefect_gateway: PrefectGateway,
    tmp_path: Path,
) -> None:
    slug = f"rep{uuid.uuid4().hex[:6]}"
    with jobs_app(database, prefect_gateway) as api:
        org = setup_org(api, slug, limits_doc(concurrent=LIMIT))
        org.deploy("train")
        alice = org.add_member()
    tag = f"t:{uuid.uuid4().hex[:8]}"
    url = database.engine.url.render_as_string(hide_password=False)
    with (
        replica("a", url, prefect_server, tmp_path) as a,
        replica("b", url, prefect_server, tmp_path) as b,
        start_worker(prefect_server, f"{slug}-cpu", tmp_path),
    ):
        replicas = {a.process.pid: a, b.process.pid: b}

        def submit(i: int, rep: Replica) -> dict[str, Any]:
            r = httpx.post(
                f"{rep.url}/api/v1/orgs/{slug}/jobs",
                headers=alice.headers,
                json={
                    "deployment": "train",
                    "parameters": {"epochs": 2, "seed": i, "sleep_s": 0.5},
                    "tags": [tag],
                },
                timeout=60,
            )
            assert r.status_code == 201, r.text
            out: dict[str, Any] = r.json()
            return out

        # Submissions land on both replicas at once: the limit holds across them.
        with ThreadPoolExecutor(JOBS) as pool:
            jobs = list(pool.map(lambda i: submit(i, (a, b)[i % 2]), range(JOBS)))
        assert sorted(j["state"] for j in jobs) == ["held"] * (JOBS - LIMIT) + ["scheduled"] * LIMIT

        violations: list[str] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                active = count_jobs(database, state=ACTIVE)
                live = prefect_gateway.count_flow_runs(
                    tags=[tag], state_types=[StateType.PENDING, StateType.RUNNING]
                ) + prefect_gateway.count_flow_runs(
                    tags=[tag], state_types=[StateType.SCHEDULED], state_names=["Scheduled"]
                )
                if active > LIMIT or live > LIMIT:
                    violations.append(f"ledger {active}, Prefect {live}")
                time.sleep(0.2)

        sampler = threading.Thread(target=sample)
        sampler.start()
        killed: Replica | None = None
        try:
            deadline = time.monotonic() + 200
            while count_jobs(database, state="completed") < JOBS:
                assert time.monotonic() < deadline, "jobs did not all complete"
                if killed is None and count_jobs(database, state="completed") >= 2:
                    holder = _lease_holder_pid(database)
                    assert holder in replicas, f"lease held by {holder}, not a replica"
                    killed = replicas[holder]
                    killed.process.send_signal(signal.SIGKILL)  # no cleanup, no lease release
                    killed.process.wait(10)
                time.sleep(0.3)
        finally:
            stop.set()
            sampler.join()
        assert killed is not None, "no replica was killed"
        survivor = b if killed is a else a
        assert _lease_holder_pid(database) == survivor.process.pid
        assert not violations, violations[:5]

        # Exactly once: one run per job, each ran to completion once.
        with database.session(write=False) as s:
            ids = {str(j["id"]) for j in jobs}
            rows = [r for r in s.scalars(select(Job)) if str(r.id) in ids]
        assert len(rows) == JOBS
        run_ids = [r.flow_run_id for r in rows]
        assert None not in run_ids and len(set(run_ids)) == JOBS
        assert prefect_gateway.count_flow_runs(tags=[tag]) == JOBS
        runs = prefect_gateway.read_flow_runs([rid for rid in run_ids if rid is not None])
        assert {r.state_type for r in runs} == {StateType.COMPLETED}
        # The survivor still serves.
        r = httpx.get(f"{survivor.url}/api/v1/orgs/{slug}/jobs", headers=alice.headers)
        assert r.status_code == 200
