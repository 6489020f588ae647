"""`POST /orgs/{org}/jobs:batch` against the session's real Prefect server, on SQLite
and PostgreSQL: admitted exactly as the same singles, per-item errors and idempotency,
limits on the batch itself."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from flows.gateway import PrefectGateway
from orgs.db import Database
from tests.integration.test_jobs_support import (
    FakePrefect,
    OrgSetup,
    count_jobs,
    jobs_app,
    limits_doc,
    setup_org,
)

pytestmark = [
    pytest.mark.prefect,
    pytest.mark.xdist_group("prefect"),
    pytest.mark.timeout(240),
]


@pytest.fixture
def org(database: Database, prefect_gateway: PrefectGateway) -> Iterator[OrgSetup]:
    with jobs_app(database, prefect_gateway) as api:
        yield setup_org(api, f"bat{uuid.uuid4().hex[:6]}", limits_doc(concurrent=2, queued=3))


def batch(org: OrgSetup, who: Any, items: list[dict[str, Any]]) -> Any:
    return org.api.post(f"/orgs/{org.slug}/jobs:batch", who, json={"jobs": items})


def outcome(item: dict[str, Any]) -> tuple[int, str]:
    """(status, state or error) of a batch item."""
    return item["status"], item["job"]["state"] if item["job"] else item["error"]


def test_batch_over_the_limits_is_admitted_as_singles_would_be(
    org: OrgSetup, prefect_gateway: PrefectGateway
) -> None:
    dep = org.deploy("train")
    alice, bob = org.add_member(), org.add_member()
    items: list[dict[str, Any]] = [
        {"deployment": "train", "parameters": {"seed": i}} for i in range(8)
    ]
    items[3] = {"deployment": "nope"}  # refused on its own; the rest go on
    items[5] = {"deployment": "train", "parameters": {"epochs": "many"}}  # schema
    # The same submissions one by one, as bob, give the reference answer.
    singles = []
    for item in items:
        r = org.submit(bob, **item)
        singles.append((r.status_code, r.json().get("state") or r.json()["error"]))

    r = batch(org, alice, items)
    assert r.status_code == 200, r.text
    body = r.json()
    got = [outcome(i) for i in body["items"]]
    assert got == singles
    # 2 run, 3 wait (the queue limit), the rest refused by the queue limit or their input.
    assert got == [
        (201, "scheduled"),
        (201, "scheduled"),
        (201, "held"),
        (422, "known_deployment"),
        (201, "held"),
        (422, "invalid"),
        (201, "held"),
        (429, "queue_within_limit"),
    ]
    assert [i["index"] for i in body["items"]] == list(range(8))
    assert (body["created"], body["existing"], body["failed"]) == (5, 0, 3)
    assert body["items"][7]["rule"] == "queue_within_limit"
    assert "epochs" in body["items"][5]["detail"]
    alice_id = uuid.UUID(alice.id)
    assert count_jobs(org.api.db, user_id=alice_id, state=["scheduled"]) == 2
    assert count_jobs(org.api.db, user_id=alice_id, state=["held"]) == 3
    # Every admitted job has its run, held in Prefect when the job is held.
    for item in body["items"]:
        if item["job"] is None:
            continue
        job = org.job(alice, item["job"]["id"])
        assert job["flow_run_id"] is not None
        run = prefect_gateway.read_flow_run(uuid.UUID(job["flow_run_id"]))
        assert run.ref().is_held == (job["state"] == "held")
    prefect_id = uuid.UUID(dep["prefect_deployment_id"])
    assert prefect_gateway.count_flow_runs(deployment_id=prefect_id) == 10  # bob's 5 + 5
    # The audit log has one row per created job, each naming it.
    audit = org.api.get(
        f"/orgs/{org.slug}/audit",
        org.owner,
        params={"action": "job.submitted", "actor": alice.name, "limit": 200},
    ).json()
    created = {i["job"]["id"] for i in body["items"] if i["job"]}
    assert {e["target_id"] for e in audit["items"]} == created
    assert len(audit["items"]) == 5

    # The limits are read afresh after a settings change (their parsed form is cached).
    carol = org.add_member()
    two = batch(org, carol, [{"deployment": "train"}] * 2).json()
    assert [outcome(i) for i in two["items"]] == [(201, "scheduled")] * 2
    assert outcome(batch(org, carol, [{"deployment": "train"}]).json()["items"][0]) == (
        201,
        "held",
    )
    org.set_limits(limits_doc(concurrent=4, queued=3))
    assert outcome(batch(org, carol, [{"deployment": "train"}]).json()["items"][0]) == (
        201,
        "scheduled",
    )


def test_batch_idempotency_per_item(org: OrgSetup, prefect_gateway: PrefectGateway) -> None:
    dep = org.deploy("train")
    alice = org.add_member()
    items = [
        {"deployment": "train", "idempotency_key": "a"},
        {"deployment": "train", "idempotency_key": "b"},
        {"deployment": "train", "idempotency_key": "a"},  # the first one again
    ]
    first = batch(org, alice, items).json()
    assert [i["status"] for i in first["items"]] == [201, 201, 200]
    ids = [i["job"]["id"] for i in first["items"]]
    assert ids[0] == ids[2] != ids[1]
    again = batch(org, alice, items).json()
    assert [i["status"] for i in again["items"]] == [200, 200, 200]
    assert [i["job"]["id"] for i in again["items"]] == ids
    # A single submission with a key from the batch finds the batch's job.
    single = org.submit(alice, idempotency_key="b")
    assert (single.status_code, single.json()["id"]) == (200, ids[1])
    assert count_jobs(org.api.db, user_id=uuid.UUID(alice.id)) == 2
    prefect_id = uuid.UUID(dep["prefect_deployment_id"])
    assert prefect_gateway.count_flow_runs(deployment_id=prefect_id) == 2


def test_batch_bad_input_names_the_item_and_creates_nothing(org: OrgSetup) -> None:
    org.deploy("train")
    alice = org.add_member()
    too_many = [{"deployment": "train"}] * 1001
    r = batch(org, alice, too_many)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "jobs" and "1000" in r.json()["detail"]
    items: list[dict[str, Any]] = [{"deployment": "train"}] * 4
    items[2] = {"deployment": "train", "priority": 1000}
    r = batch(org, alice, items)
    assert r.status_code == 422
    assert r.json()["field"] == "jobs.2.priority"
    r = batch(org, alice, [])
    assert r.status_code == 422 and r.json()["field"] == "jobs"
    r = org.api.post(f"/orgs/{org.slug}/jobs:batch", alice, json={"jobs": "x"})
    assert r.status_code == 422
    assert count_jobs(org.api.db) == 0
    # A non-member learns nothing (404).
    outsider = org.api.signup()
    assert batch(org, outsider, [{"deployment": "train"}]).status_code == 404
    assert count_jobs(org.api.db) == 0


def test_a_full_batch_of_1000_with_prefect_failing_for_some(database: Database) -> None:
    # The in-memory Prefect: a thousand real runs would take the shared test server
    # minutes; this is about the batch's own bookkeeping.
    fake = FakePrefect()
    with jobs_app(database, fake) as api:
        org = setup_org(api, f"bat{uuid.uuid4().hex[:6]}", limits_doc(concurrent=1000))
        org.set_limits(limits_doc(concurrent=1000, queued=1000, types={"cpu": (1000, 1000)}))
        org.deploy("train")
        alice = org.add_member()
        items = [{"deployment": "train", "parameters": {"seed": i}} for i in range(1000)]
        fake.fail_next(3)  # Prefect unreachable for three runs: left to the dispatcher
        r = batch(org, alice, items)
        assert r.status_code == 200, r.text[:500]
        body = r.json()
        assert (body["created"], body["failed"]) == (1000, 0)
        assert {i["job"]["state"] for i in body["items"]} == {"scheduled"}
        assert [i["index"] for i in body["items"]] == list(range(1000))
        assert count_jobs(database, user_id=uuid.UUID(alice.id)) == 1000
        assert count_jobs(database, flow_run_id=None) == 3
        assert len(fake.runs) == 997
        seeds = {run.info.parameters["seed"] for run in fake.runs.values()}
        assert len(seeds) == 997
        # One more is over the limit of 1000 running: it waits.
        r = batch(org, alice, [{"deployment": "train"}])
        assert outcome(r.json()["items"][0]) == (201, "held")
