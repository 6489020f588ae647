"""Limits hold exactly with real concurrency: a live API (uvicorn) with its dispatcher
thread, a real Prefect server and a real process worker, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from api.app import create_app
from flows.gateway import PrefectGateway, StateType
from orgs.db import Database
from tests.integration.test_jobs_support import (
    count_jobs,
    jobs_app,
    limits_doc,
    settings_with,
    setup_org,
)
from tests.prefect_server import PrefectServer, start_worker
from tests.support import serve_in_thread

pytestmark = [
    pytest.mark.prefect,
    pytest.mark.xdist_group("prefect"),
    pytest.mark.timeout(240),
]

ACTIVE = ["scheduled", "running", "cancelling"]


def test_ten_parallel_jobs_two_at_a_time_and_fair_share(
    database: Database,
    prefect_server: PrefectServer,
    prefect_gateway: PrefectGateway,
    tmp_path: Any,
) -> None:
    slug = f"lim{uuid.uuid4().hex[:6]}"
    with jobs_app(database, prefect_gateway) as api:
        org = setup_org(api, slug, limits_doc(concurrent=2))
        org.deploy("train")
        alice, bob = org.add_member(), org.add_member()
    tag = f"t:{uuid.uuid4().hex[:8]}"
    settings = settings_with(dispatcher_enabled=True, dispatcher_interval_s=0.3)
    app = create_app(settings, database, prefect_gateway)
    with (
        start_worker(prefect_server, f"{slug}-cpu", tmp_path),
        serve_in_thread(app) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):

        def submit(who: Any, i: int) -> dict[str, Any]:
            r = http.post(
                f"/orgs/{slug}/jobs",
                headers=who.headers,
                json={
                    "deployment": "train",
                    "parameters": {"epochs": 2, "seed": i, "sleep_s": 0.2},
                    "tags": [tag],
                },
            )
            assert r.status_code == 201, r.text
            out: dict[str, Any] = r.json()
            return out

        with ThreadPoolExecutor(10) as pool:
            alice_jobs = list(pool.map(lambda i: submit(alice, i), range(10)))
        assert sorted(j["state"] for j in alice_jobs) == ["held"] * 8 + ["scheduled"] * 2
        assert count_jobs(database, state=ACTIVE) == 2
        bob_job = submit(bob, 99)
        assert bob_job["state"] == "scheduled"  # bob is not queued behind alice's backlog

        # Sample both sides until everything is over: alice never has more than 2 jobs
        # holding a slot in the ledger, nor more than 2 runs a worker may run in Prefect.
        samples = 0
        violations: list[str] = []
        stop = threading.Event()

        def sample() -> None:
            nonlocal samples
            alice_tag = f"user:{alice.name}"
            while not stop.is_set():
                active = count_jobs(database, state=ACTIVE, user_id=uuid.UUID(alice.id))
                live = prefect_gateway.count_flow_runs(
                    tags=[tag, alice_tag],
                    state_types=[StateType.PENDING, StateType.RUNNING],
                ) + prefect_gateway.count_flow_runs(
                    tags=[tag, alice_tag],
                    state_types=[StateType.SCHEDULED],
                    state_names=["Scheduled"],
                )
                if active > 2 or live > 2:
                    violations.append(f"ledger {active}, Prefect {live}")
                samples += 1
                time.sleep(0.4)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            deadline = time.monotonic() + 150
            while count_jobs(database, state="completed") < 11:
                assert time.monotonic() < deadline, "jobs did not all complete"
                time.sleep(0.5)
        finally:
            stop.set()
            sampler.join()
        assert not violations, violations[:5]
        assert samples > 10

        def show(who: Any, job_id: str) -> dict[str, Any]:
            out: dict[str, Any] = http.get(
                f"/orgs/{slug}/jobs/{job_id}", headers=who.headers
            ).json()
            return out

        shown = [show(alice, j["id"]) for j in alice_jobs]
        bob_shown = show(bob, bob_job["id"])
        last_alice_release = max(j["released_at"] for j in shown)
        assert bob_shown["released_at"] < last_alice_release
        assert {j["state"] for j in shown} == {"completed"}
    assert prefect_gateway.count_flow_runs(tags=[tag]) == 11
