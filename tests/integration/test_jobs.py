"""Jobs end to end against the session's real Prefect server and a real process worker:
deployments, submission, states from Prefect, cancel, logs, bad input, explain."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.dispatch.dispatcher import Dispatcher
from flows.gateway import PrefectGateway, StateType
from orgs.db import Database
from tests.integration.test_jobs_support import (
    ETL,
    OrgSetup,
    count_jobs,
    jobs_app,
    limits_doc,
    settings_with,
    setup_org,
)
from tests.prefect_server import PREFECT_STALL_S, PrefectServer, start_worker

pytestmark = [
    pytest.mark.prefect,
    pytest.mark.xdist_group("prefect"),
    pytest.mark.timeout(240),
]

SLUG = "jobse2e"  # one pool (and one worker) for the module; each test has a fresh DB


@pytest.fixture(scope="module")
def worker(
    prefect_server: PrefectServer,
    prefect_gateway: PrefectGateway,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    prefect_gateway.ensure_work_pool(f"{SLUG}-cpu")
    with start_worker(prefect_server, f"{SLUG}-cpu", tmp_path_factory.mktemp("worker")):
        yield


@pytest.fixture
def org(sqlite_database: Database, prefect_gateway: PrefectGateway) -> Iterator[OrgSetup]:
    with jobs_app(sqlite_database, prefect_gateway) as api:
        yield setup_org(api, SLUG, limits_doc(concurrent=5, queued=3))


def drive(
    db: Database,
    gateway: PrefectGateway,
    done: Callable[[], bool],
    timeout_s: float = 90 + PREFECT_STALL_S,
) -> None:
    """Run dispatcher cycles until `done()`."""
    d = Dispatcher(db, gateway, settings_with(dispatcher_create_grace_s=0.0))
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("jobs did not reach the expected states")
        d.run_once()
        time.sleep(0.3)


def test_jobs_complete_fail_and_cancel(
    org: OrgSetup, prefect_gateway: PrefectGateway, worker: None, tmp_path: Path
) -> None:
    org.deploy("etl", ETL, description="ETL example", tags=["example"])
    org.deploy("train")
    alice = org.add_member()
    out_dir = tmp_path / "etl-out"
    ok = org.submit(alice, "etl", parameters={"rows": 200, "output_dir": str(out_dir)})
    bad = org.submit(alice, "train", parameters={"epochs": 3, "fail_at_epoch": 2})
    slow = org.submit(alice, "train", parameters={"epochs": 600, "sleep_s": 0.5})
    assert [r.status_code for r in (ok, bad, slow)] == [201, 201, 201]
    ok_job, bad_job, slow_job = ok.json(), bad.json(), slow.json()
    assert ok_job["state"] == "scheduled" and ok_job["flow_run_id"]
    run = prefect_gateway.read_flow_run(uuid.UUID(ok_job["flow_run_id"]))
    assert run.name.startswith(f"etl-{alice.name}-")
    assert {f"org:{SLUG}", f"user:{alice.name}", "type:cpu", "example"} <= set(run.tags)

    def state(job: dict[str, object]) -> str:
        return str(org.job(alice, str(job["id"]))["state"])

    drive(
        org.api.db,
        prefect_gateway,
        lambda: (
            state(ok_job) == "completed"
            and state(bad_job) == "failed"
            and state(slow_job) == "running"
        ),
    )
    summary = json.loads((out_dir / "summary.json").read_text())  # the flow's result
    assert sum(g["count"] for g in summary.values()) == 200 - 200 // 50
    shown = org.job(alice, ok_job["id"])
    assert (
        shown["started_at"]
        and shown["ended_at"]
        # The org's Prefect UI behind the console's login, never Prefect itself.
        and shown["prefect_url"].endswith(
            f"/prefect/{org.slug}/runs/flow-run/{ok_job['flow_run_id']}"
        )
    )
    assert shown["resources"] == {"memory_mb": 4096, "max_runtime_s": 3600}  # org maxima
    assert "fail_at_epoch" in org.job(alice, bad_job["id"])["reason"]

    r = org.api.post(f"/orgs/{SLUG}/jobs/{slow_job['id']}/cancel", alice)
    assert r.status_code == 200 and r.json()["state"] == "cancelling"
    drive(org.api.db, prefect_gateway, lambda: state(slow_job) == "cancelled")
    assert prefect_gateway.read_flow_run(uuid.UUID(slow_job["flow_run_id"])).state_type is (
        StateType.CANCELLED
    )

    deadline = time.monotonic() + 20 + PREFECT_STALL_S
    while True:  # the flow process ships its last lines just after its final state
        logs = org.api.get(f"/orgs/{SLUG}/jobs/{bad_job['id']}/logs", alice).json()
        text = "\n".join(line["message"] for line in logs["items"])
        if "epoch 1 loss=" in text or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "epoch 1 loss=" in text
    listed = org.api.get(f"/orgs/{SLUG}/jobs", alice, params={"state": "failed"}).json()
    assert [j["id"] for j in listed["items"]] == [bad_job["id"]]


def test_bad_input_is_422_and_creates_nothing(
    org: OrgSetup, prefect_gateway: PrefectGateway
) -> None:
    dep = org.deploy("train")
    alice = org.add_member()
    prefect_id = uuid.UUID(dep["prefect_deployment_id"])
    before = prefect_gateway.count_flow_runs(deployment_id=prefect_id)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"parameters": {"epochz": 3}}, "parameters.epochz"),
        ({"parameters": {"epochs": "ten"}}, "parameters.epochs"),
        ({"parameters": {"learning_rate": [1]}}, "parameters.learning_rate"),
        ({"resources": {"max_runtime_s": -5}}, "resources.max_runtime_s"),
        ({"resources": {"memory_mb": 0}}, "resources.memory_mb"),
        ({"resources": {"max_runtime_s": 10**6}}, "resources.max_runtime_s"),
        ({"machine_type": "gpu"}, "machine_type"),
    ]
    for body, field in cases:
        r = org.submit(alice, **body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["field"] == field, (body, r.json())
    r = org.submit(alice, "no-such-deployment")
    assert r.status_code == 422
    assert r.json() | {"detail": ""} == {
        "error": "known_deployment",
        "rule": "known_deployment",
        "field": "deployment",
        "detail": "",
        "request_id": r.headers["X-Request-ID"],
    }
    assert count_jobs(org.api.db) == 0
    assert prefect_gateway.count_flow_runs(deployment_id=prefect_id) == before


def test_explain_and_queue_limit(org: OrgSetup, prefect_gateway: PrefectGateway) -> None:
    dep = org.deploy("train")
    alice = org.add_member()
    org.set_limits(limits_doc(concurrent=1, queued=2))
    prefect_id = uuid.UUID(dep["prefect_deployment_id"])
    r = org.api.post(f"/orgs/{SLUG}/jobs/explain", alice, json={"deployment": "train"})
    assert r.status_code == 200
    assert (r.json()["decision"], r.json()["rule"]) == ("accept", None)
    assert {o["rule"] for o in r.json()["rules"]} >= {"user_concurrency", "type_scale"}
    running = org.submit(alice, parameters={"epochs": 1})
    assert running.json()["state"] == "scheduled"
    held = org.submit(alice, parameters={"epochs": 1})
    assert held.json()["state"] == "held" and held.json()["queue_position"] == 1
    before = (count_jobs(org.api.db), prefect_gateway.count_flow_runs(deployment_id=prefect_id))
    r = org.api.post(f"/orgs/{SLUG}/jobs/explain", alice, json={"deployment": "train"})
    ex = r.json()
    assert (ex["decision"], ex["rule"], ex["queue_position"]) == ("hold", "user_concurrency", 2)
    assert "max_concurrent_jobs_per_user" in ex["reason"]
    r = org.api.post(
        f"/orgs/{SLUG}/jobs/explain",
        alice,
        json={"deployment": "train", "resources": {"memory_mb": -1}},
    )
    assert (r.json()["decision"], r.json()["field"]) == ("reject", "resources.memory_mb")
    after = (count_jobs(org.api.db), prefect_gateway.count_flow_runs(deployment_id=prefect_id))
    assert after == before  # explain creates nothing

    org.submit(alice, parameters={"epochs": 1})  # second in the queue: at the limit of 2
    r = org.submit(alice, parameters={"epochs": 1})
    assert r.status_code == 429
    assert (r.json()["error"], r.json()["rule"]) == ("queue_within_limit", "queue_within_limit")
    for job in org.api.get(f"/orgs/{SLUG}/jobs", org.owner).json()["items"]:
        org.api.post(f"/orgs/{SLUG}/jobs/{job['id']}/cancel", org.owner)


def test_deployments_are_scoped_per_org(
    sqlite_database: Database, prefect_gateway: PrefectGateway
) -> None:
    with jobs_app(sqlite_database, prefect_gateway) as api:
        a = setup_org(api, f"da{uuid.uuid4().hex[:6]}")
        b = setup_org(api, f"db{uuid.uuid4().hex[:6]}")
        alice = a.add_member()
        dep_a = a.deploy("train", who=alice, tags=["ml"])
        dep_b = b.deploy("train")
        assert dep_a["prefect_deployment_id"] != dep_b["prefect_deployment_id"]
        assert dep_a["prefect_name"] == f"train/{a.slug}.train"
        info = prefect_gateway.read_deployment(uuid.UUID(dep_a["prefect_deployment_id"]))
        assert info.work_pool_name == f"{a.slug}-cpu"
        assert set(info.tags) == {"ml", f"org:{a.slug}"}
        pool = prefect_gateway.read_work_pool(f"{a.slug}-cpu")
        assert a.slug in (pool.description or "") and "cpu" in (pool.description or "")

        bob, admin = a.add_member(), a.add_member("admin")
        listed = api.get(f"/orgs/{a.slug}/deployments", bob).json()
        assert [d["name"] for d in listed["items"]] == ["train"]
        assert api.get(f"/orgs/{b.slug}/deployments/train", alice).status_code == 404
        # Only the creator (or an admin) may change or delete it.
        r = api.post(
            f"/orgs/{a.slug}/deployments",
            bob,
            json={"name": "train", "entrypoint": "flows/library/train.py:train"},
        )
        assert r.status_code == 403
        assert api.delete(f"/orgs/{a.slug}/deployments/train", bob).status_code == 403
        r = a.api.post(
            f"/orgs/{a.slug}/deployments",
            alice,
            json={"name": "Bad Name", "entrypoint": "flows/library/train.py:train"},
        )
        assert (r.status_code, r.json()["field"]) == (422, "name")
        assert api.delete(f"/orgs/{a.slug}/deployments/train", admin).status_code == 204
        assert api.get(f"/orgs/{a.slug}/deployments/train", alice).status_code == 404
        assert b.submit(b.owner, parameters={"epochs": 1}).status_code == 201
