"""No lost or doubled job: 200 submissions from 32 parallel clients while a fifth of the
gateway's Prefect calls fail (before sending, after sending with the answer lost, or as
503) give exactly 200 jobs and 200 flow runs, one per job, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from api.app import create_app
from flows.dispatch.dispatcher import Dispatcher
from flows.gateway import PrefectGateway
from flows.models import Job
from orgs.db import Database
from tests.integration.test_jobs_support import (
    count_jobs,
    jobs_app,
    limits_doc,
    settings_with,
    setup_org,
)
from tests.prefect_server import PrefectServer
from tests.support import serve_in_thread

pytestmark = [
    pytest.mark.prefect,
    pytest.mark.xdist_group("prefect"),
    pytest.mark.timeout(240),
]

SUBMISSIONS = 200
CLIENTS = 32


class FlakyTransport(httpx.BaseTransport):
    """Fails `rate` of the requests: a third never sent (connect error), a third sent
    with the answer lost (read error after Prefect did the work), a third as HTTP 503."""

    def __init__(self, inner: httpx.BaseTransport, rate: float, seed: int = 7) -> None:
        self.inner = inner
        self.rate = rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected = {"connect": 0, "lost": 0, "503": 0}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            roll = self.rng.random()
        if roll < self.rate / 3:
            self._count("connect")
            raise httpx.ConnectError("injected: not sent", request=request)
        if roll < 2 * self.rate / 3:
            response = self.inner.handle_request(request)
            response.read()
            response.close()
            self._count("lost")
            raise httpx.ReadError("injected: answer lost", request=request)
        if roll < self.rate:
            self._count("503")
            return httpx.Response(503, json={"detail": "injected"}, request=request)
        return self.inner.handle_request(request)

    def _count(self, kind: str) -> None:
        with self.lock:
            self.injected[kind] += 1

    def close(self) -> None:
        self.inner.close()


def test_200_submissions_under_faults(
    database: Database, prefect_server: PrefectServer, prefect_gateway: PrefectGateway
) -> None:
    flaky = FlakyTransport(httpx.HTTPTransport(), rate=0.2)
    gateway = PrefectGateway(
        prefect_server.api_url, prefect_server.auth_string, transport=flaky, backoff_base=0.05
    )
    slug = f"nl{uuid.uuid4().hex[:6]}"  # no worker on this pool: the runs just wait
    tag = f"t:{uuid.uuid4().hex[:8]}"
    with jobs_app(database, prefect_gateway) as api:
        org = setup_org(api, slug, limits_doc(concurrent=50, queued=1000))
        org.deploy("train")
        people = [org.add_member() for _ in range(4)]
    app = create_app(settings_with(), database, gateway)
    try:
        with (
            serve_in_thread(app) as url,
            httpx.Client(
                base_url=url, timeout=120, limits=httpx.Limits(max_connections=CLIENTS)
            ) as http,
        ):

            def submit(i: int) -> tuple[int, Any]:
                who = people[i % len(people)]
                r = http.post(
                    f"/orgs/{slug}/jobs",
                    headers=who.headers,
                    json={"deployment": "train", "parameters": {"seed": i}, "tags": [tag]},
                )
                return r.status_code, r.json()

            with ThreadPoolExecutor(CLIENTS) as pool:
                results = list(pool.map(submit, range(SUBMISSIONS)))
        assert [code for code, _ in results] == [201] * SUBMISSIONS, [
            body for code, body in results if code != 201
        ][:3]
        # Any run Prefect never confirmed in time (a request's Prefect budget is bounded)
        # is created by the dispatcher, through the same faults, with the same key.
        Dispatcher(database, gateway, settings_with(dispatcher_create_grace_s=0.0)).run_once()
        assert sum(flaky.injected.values()) > 20, flaky.injected  # the faults did happen
    finally:
        gateway.close()

    assert count_jobs(database) == SUBMISSIONS
    with database.session(write=False) as s:
        jobs = {job.id: job.flow_run_id for job in s.query(Job)}
    assert all(run_id is not None for run_id in jobs.values())
    assert len(set(jobs.values())) == SUBMISSIONS
    # Prefect has exactly one run per job, and each is keyed by its job's id.
    assert prefect_gateway.count_flow_runs(tags=[tag]) == SUBMISSIONS
    runs = prefect_gateway.read_flow_runs([r for r in jobs.values() if r is not None])
    assert {run.idempotency_key for run in runs} == {str(job_id) for job_id in jobs}
