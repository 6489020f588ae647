"""The dispatcher's decisions on both databases, against an in-memory Prefect.

Fair order, priorities, limits under parallel submissions, restarts and overlapping
dispatchers, Prefect down at submission, adoption of runs made outside the API,
member removal. The real-Prefect end-to-end versions live in test_jobs*.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from api.app import create_app
from flows.dispatch.dispatcher import CycleReport, Dispatcher
from flows.gateway import HELD_STATE_NAME, RunCreator, StateType
from flows.models import Deployment, Job, Schedule
from orgs.db import Database
from tests.integration.test_jobs_support import (
    FakePrefect,
    OrgSetup,
    count_jobs,
    jobs_app,
    limits_doc,
    settings_with,
    setup_org,
)
from tests.support import ApiClient, Person, serve_in_thread

pytestmark = pytest.mark.timeout(120)

ACTIVE = ["scheduled", "running", "cancelling"]


@pytest.fixture
def fake() -> FakePrefect:
    return FakePrefect()


@pytest.fixture
def api(database: Database, fake: FakePrefect) -> Iterator[ApiClient]:
    with jobs_app(database, fake) as client:
        yield client


def dispatcher(db: Database, fake: FakePrefect, **overrides: Any) -> Dispatcher:
    settings = settings_with(dispatcher_create_grace_s=0.0, **overrides)
    return Dispatcher(db, fake, settings)  # type: ignore[arg-type]


def org_with(api: ApiClient, **limits: Any) -> OrgSetup:
    org = setup_org(api, f"d{uuid.uuid4().hex[:8]}", limits_doc(**limits))
    org.deploy("train", parameter_schema={})
    return org


def submit_ok(org: OrgSetup, who: Person, **body: Any) -> dict[str, Any]:
    r = org.submit(who, **body)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def runs_of(db: Database, user_id: str | None = None, **where: Any) -> list[Job]:
    with db.session(write=False) as s:
        stmt = select(Job).order_by(Job.created_at)
        if user_id is not None:
            stmt = stmt.where(Job.user_id == uuid.UUID(user_id))
        for key, value in where.items():
            stmt = stmt.where(getattr(Job, key) == value)
        return list(s.scalars(stmt))


def test_hold_then_fair_release(api: ApiClient, fake: FakePrefect) -> None:
    """One user's backlog does not starve another user's first job (max_scale 2)."""
    org = org_with(api, concurrent=10, types={"cpu": (2, 10)})
    alice, bob = org.add_member(), org.add_member()
    a_jobs = [submit_ok(org, alice) for _ in range(6)]
    assert [j["state"] for j in a_jobs] == ["scheduled"] * 2 + ["held"] * 4
    assert a_jobs[2]["rule"] == "type_scale"
    assert [j["queue_position"] for j in a_jobs[2:]] == [1, 2, 3, 4]
    b_job = submit_ok(org, bob)
    assert b_job["state"] == "held"
    # Held runs exist in Prefect, named AwaitingUserSlot with the reason.
    held_run = fake.runs[uuid.UUID(b_job["flow_run_id"])].info
    assert held_run.state_name == HELD_STATE_NAME and "max_scale" in (held_run.message or "")

    d = dispatcher(api.db, fake)
    fake.finish(uuid.UUID(a_jobs[0]["flow_run_id"]))
    d.run_once()
    assert org.job(bob, b_job["id"])["state"] == "scheduled"  # bob first: never served
    assert count_jobs(api.db, state="held") == 4
    fake.finish(uuid.UUID(a_jobs[1]["flow_run_id"]))
    d.run_once()
    assert org.job(alice, a_jobs[2]["id"])["state"] == "scheduled"  # then alice, in order
    assert {r.id for r in fake.live()} == {uuid.UUID(j["flow_run_id"]) for j in (a_jobs[2], b_job)}


def test_priority_first_then_round_robin(api: ApiClient, fake: FakePrefect) -> None:
    org = org_with(api, concurrent=10, types={"cpu": (1, 10)})
    alice, bob = org.add_member(), org.add_member()
    first = submit_ok(org, alice)
    low = submit_ok(org, bob, priority=0)
    high = submit_ok(org, alice, priority=5)
    assert (low["state"], high["state"]) == ("held", "held")
    fake.finish(uuid.UUID(first["flow_run_id"]))
    dispatcher(api.db, fake).run_once()
    assert org.job(alice, high["id"])["state"] == "scheduled"
    assert org.job(bob, low["id"])["state"] == "held"


def test_parallel_submissions_hold_exactly(database: Database, fake: FakePrefect) -> None:
    """10 parallel submissions with max_concurrent_jobs_per_user 2: 2 + 8, never more."""
    with jobs_app(database, fake) as api:
        org = org_with(api, concurrent=2)
        alice = org.add_member()
    app = create_app(settings_with(), database, fake)  # type: ignore[arg-type]
    with serve_in_thread(app) as url:

        def submit(i: int) -> int:
            r = httpx.post(
                f"{url}/orgs/{org.slug}/jobs",
                headers=alice.headers,
                json={"deployment": "train", "parameters": {"i": i}},
                timeout=60,
            )
            return r.status_code

        with ThreadPoolExecutor(10) as pool:
            codes = list(pool.map(submit, range(10)))
    assert codes == [201] * 10
    assert count_jobs(database, state=ACTIVE) == 2
    assert count_jobs(database, state="held") == 8
    assert len(fake.live()) == 2
    assert len(fake.runs) == 10


def test_restart_and_overlapping_dispatchers_never_double_release(
    api: ApiClient, fake: FakePrefect
) -> None:
    org = org_with(api, concurrent=2)
    alice = org.add_member()
    jobs = [submit_ok(org, alice) for _ in range(6)]
    for j in jobs[:2]:
        fake.finish(uuid.UUID(j["flow_run_id"]))
    first = dispatcher(api.db, fake)
    report = CycleReport()
    first.reconcile(report)
    assert count_jobs(api.db, state="completed") == 2
    # The ledger commits the release, then Prefect is unreachable: the "crash" window.
    fake.fail_next(2)
    first.release_held(report)
    assert report.released == 2
    assert count_jobs(api.db, state="scheduled") == 2
    assert fake.live() == []  # both runs still held in Prefect

    # A new dispatcher (restart) repairs Prefect without releasing anything else.
    second = dispatcher(api.db, fake)
    second.run_once()
    assert count_jobs(api.db, state="scheduled") == 2
    assert count_jobs(api.db, state="held") == 2
    assert len(fake.live()) == 2

    # Two dispatchers at once (a lease handover): still exactly the limit.
    for row in runs_of(api.db, state="scheduled"):
        assert row.flow_run_id is not None
        fake.finish(row.flow_run_id)
    barrier = threading.Barrier(2)

    def cycle(d: Dispatcher) -> None:
        barrier.wait()
        for _ in range(3):
            d.run_once()

    threads = [threading.Thread(target=cycle, args=(d,)) for d in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count_jobs(api.db, state=ACTIVE) == 2
    assert count_jobs(api.db, state="held") == 0
    assert len(fake.live()) == 2


def test_lease_has_one_holder(database: Database, fake: FakePrefect) -> None:
    a = dispatcher(database, fake, dispatcher_lease_ttl_s=30)
    b = dispatcher(database, fake, dispatcher_lease_ttl_s=30)
    assert a.acquire_lease() is True
    assert b.acquire_lease() is False
    assert a.acquire_lease() is True  # renew
    a.release_lease()
    assert b.acquire_lease() is True
    assert a.acquire_lease() is False


def test_prefect_down_at_submit_is_neither_lost_nor_doubled(
    api: ApiClient, fake: FakePrefect
) -> None:
    org = org_with(api, concurrent=1)
    alice = org.add_member()
    fake.fail_next(1000)
    first = submit_ok(org, alice, idempotency_key="k1")
    second = submit_ok(org, alice)
    assert (first["state"], first["flow_run_id"]) == ("scheduled", None)
    assert (second["state"], second["flow_run_id"]) == ("held", None)
    # A client retrying with its key gets the same job back, not a new one.
    again = org.submit(alice, idempotency_key="k1")
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert count_jobs(api.db) == 2

    fake.fail_next(0)
    d = dispatcher(api.db, fake)
    d.run_once()
    d.run_once()
    jobs = runs_of(api.db)
    assert all(j.flow_run_id is not None for j in jobs)
    assert len(fake.runs) == 2
    assert {j.state for j in jobs} == {"scheduled", "held"}
    held = next(j for j in jobs if j.state == "held")
    assert held.flow_run_id is not None and fake.runs[held.flow_run_id].info.is_held


def test_cancel_held_and_active(api: ApiClient, fake: FakePrefect) -> None:
    org = org_with(api, concurrent=1)
    alice, bob = org.add_member(), org.add_member()
    running = submit_ok(org, alice)
    held = submit_ok(org, alice)
    run_id = uuid.UUID(running["flow_run_id"])
    fake.start(run_id)
    # Others' jobs are invisible to members (404); admins may cancel them.
    assert org.api.post(f"/orgs/{org.slug}/jobs/{held['id']}/cancel", bob).status_code == 404
    r = org.api.post(f"/orgs/{org.slug}/jobs/{held['id']}/cancel", alice)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert fake.runs[uuid.UUID(held["flow_run_id"])].info.state_type is StateType.CANCELLED
    r = org.api.post(f"/orgs/{org.slug}/jobs/{running['id']}/cancel", org.owner)
    assert r.status_code == 200 and r.json()["state"] == "cancelling"
    assert fake.runs[run_id].info.state_type is StateType.CANCELLING
    fake.finish(run_id, StateType.CANCELLED)  # the worker stopped it
    dispatcher(api.db, fake).run_once()
    assert org.job(alice, running["id"])["state"] == "cancelled"
    r = org.api.post(f"/orgs/{org.slug}/jobs/{running['id']}/cancel", alice)
    assert r.status_code == 409
    audit = org.api.get(f"/orgs/{org.slug}/audit", org.owner, params={"action": "job.*"})
    actions = [e["action"] for e in audit.json()["items"]]
    assert actions.count("job.submitted") == 2
    assert "job.cancelled" in actions and "job.cancel_requested" in actions


def test_lowered_limit_rejects_at_release(api: ApiClient, fake: FakePrefect) -> None:
    org = org_with(api, concurrent=1, runtime=3600)
    alice = org.add_member()
    first = submit_ok(org, alice)
    asked = submit_ok(org, alice, resources={"max_runtime_s": 3000})
    default = submit_ok(org, alice)
    org.set_limits(limits_doc(concurrent=1, runtime=600))
    fake.finish(uuid.UUID(first["flow_run_id"]))
    dispatcher(api.db, fake).run_once()
    got = org.job(alice, asked["id"])
    assert (got["state"], got["rule"]) == ("rejected", "runtime_within_limit")
    assert fake.runs[uuid.UUID(asked["flow_run_id"])].info.state_name == "Rejected"
    released = org.job(alice, default["id"])
    # No runtime asked: it gets the maximum in force when it is released.
    assert released["state"] == "scheduled"
    assert released["resources"]["max_runtime_s"] == 600


def test_member_removal_cancels_their_jobs(api: ApiClient, fake: FakePrefect) -> None:
    org = org_with(api, concurrent=1)
    alice = org.add_member()
    running = submit_ok(org, alice)
    held = submit_ok(org, alice)
    fake.start(uuid.UUID(running["flow_run_id"]))
    r = org.api.delete(f"/orgs/{org.slug}/members/{alice.id}", org.owner)
    assert r.status_code in (200, 204), r.text
    states = {j.id: j.state for j in runs_of(api.db)}
    assert states[uuid.UUID(held["id"])] == "cancelled"
    assert states[uuid.UUID(running["id"])] == "cancelling"
    dispatcher(api.db, fake).run_once()
    assert fake.runs[uuid.UUID(running["flow_run_id"])].info.state_type is StateType.CANCELLING
    assert fake.runs[uuid.UUID(held["flow_run_id"])].info.state_type is StateType.CANCELLED


def test_adoption_of_runs_made_outside_the_api(api: ApiClient, fake: FakePrefect) -> None:
    org = org_with(api, concurrent=1)
    alice = org.add_member()
    r = org.api.post(
        f"/orgs/{org.slug}/schedules", alice, json={"deployment": "train", "cron": "* * * * *"}
    )
    assert r.status_code == 201, r.text
    with api.db.session(write=False) as s:
        sched = s.scalars(select(Schedule)).one()
        dep = s.scalars(select(Deployment)).one()
    assert dep.prefect_deployment_id is not None
    from_schedule = RunCreator(sched.prefect_schedule_id, "SCHEDULE", True)
    first = fake.add_foreign_run(dep.prefect_deployment_id, from_schedule)
    second = fake.add_foreign_run(dep.prefect_deployment_id, from_schedule)
    stray = fake.add_foreign_run(dep.prefect_deployment_id, RunCreator(None, None))
    tagged = fake.add_foreign_run(
        dep.prefect_deployment_id, RunCreator(None, None), tags=[f"user:{org.owner.name}"]
    )
    prefect_mode = dispatcher(api.db, fake, schedules_backend="prefect")
    prefect_mode.run_once()
    adopted = {j.flow_run_id: j for j in runs_of(api.db)}
    assert adopted[first].state == "scheduled" and adopted[first].source == "schedule"
    assert str(adopted[first].user_id) == alice.id
    # Alice is at her limit: the schedule's second run waits, visibly, in Prefect.
    assert (adopted[second].state, adopted[second].rule) == ("held", "user_concurrency")
    assert fake.runs[second].info.is_held
    assert stray not in adopted
    assert fake.runs[stray].info.state_name == "Rejected"
    # A `user:` tag is a label, not an identity: refused like the stray run.
    assert tagged not in adopted
    assert fake.runs[tagged].info.state_name == "Rejected"
    prefect_mode.run_once()  # nothing adopted twice
    assert count_jobs(api.db) == 2
    # With the control plane firing schedules, a run Prefect made from one would double
    # it: rejected.
    third = fake.add_foreign_run(dep.prefect_deployment_id, from_schedule)
    dispatcher(api.db, fake).adopt(CycleReport())
    assert fake.runs[third].info.state_name == "Rejected"


def test_schedule_fires_are_submissions_of_their_owner(api: ApiClient, fake: FakePrefect) -> None:
    org = org_with(api, concurrent=1)
    alice = org.add_member()
    busy = submit_ok(org, alice)
    r = org.api.post(
        f"/orgs/{org.slug}/schedules",
        alice,
        json={"deployment": "train", "cron": "* * * * *", "parameters": {"epochs": 1}},
    )
    assert r.status_code == 201, r.text
    # Two dispatchers with a 3-minute horizon: each fire happens once.
    first = dispatcher(api.db, fake, dispatcher_adopt_horizon_s=180)
    second = dispatcher(api.db, fake, dispatcher_adopt_horizon_s=180)
    first.run_once()
    second.run_once()
    first.run_once()
    fires = runs_of(api.db, source="schedule")
    assert 3 <= len(fires) <= 4
    assert len({j.idempotency_key for j in fires}) == len(fires)
    assert {(j.state, j.rule) for j in fires} == {("held", "user_concurrency")}
    assert all(str(j.user_id) == alice.id and j.parameters == {"epochs": 1} for j in fires)
    assert all(j.flow_run_id is not None and fake.runs[j.flow_run_id].info.is_held for j in fires)
    assert len(fake.live()) == 1  # only alice's own submission may run

    # Her slot frees: a fire is released only once its time has come.
    fake.finish(uuid.UUID(busy["flow_run_id"]))
    first.run_once()
    assert count_jobs(api.db, source="schedule", state="scheduled") == 0


def test_org_deletion_cleans_up_prefect(api: ApiClient, fake: FakePrefect) -> None:
    org = org_with(api, concurrent=1)
    alice = org.add_member()
    running = submit_ok(org, alice)
    held = submit_ok(org, alice)
    fake.start(uuid.UUID(running["flow_run_id"]))
    r = org.api.get(f"/orgs/{org.slug}", org.owner)
    r = org.api.request(
        "DELETE", f"/orgs/{org.slug}", org.owner, json={"confirm": r.json()["name"]}
    )
    assert r.status_code in (200, 204), r.text
    assert count_jobs(api.db) == 0
    dispatcher(api.db, fake).run_once()
    calls = {(name, target) for name, target in fake.calls}
    # Every live run ends (forced: the org's agents stop, nobody finishes a cancel).
    for run in (running, held):
        assert ("force_cancel_flow_run", uuid.UUID(run["flow_run_id"])) in calls
        assert fake.runs[uuid.UUID(run["flow_run_id"])].info.state_type is StateType.CANCELLED
    assert any(name == "delete_deployment" for name, _ in calls)
    from flows.models import PrefectTask

    # The pools wait until the org's agents have heard (three heartbeats), then go.
    assert fake.deleted_pools == []
    with api.db.session(write=False) as s:
        assert {t.kind for t in s.scalars(select(PrefectTask))} == {"delete_work_pool"}
    dispatcher(api.db, fake, agent_heartbeat_interval_s=0.0).run_once()
    assert f"{org.slug}-cpu" in fake.deleted_pools
    with api.db.session(write=False) as s:
        assert s.scalars(select(PrefectTask)).all() == []


def test_failures_notify_and_decisions_are_counted(api: ApiClient, fake: FakePrefect) -> None:
    from orgs import metrics
    from orgs.models import Organization
    from orgs.notifications import NotificationOutbox, NotificationTarget

    org = org_with(api, concurrent=1, queued=1)
    alice = org.add_member()
    with api.db.transaction() as s:
        org_id = s.scalars(select(Organization.id).where(Organization.slug == org.slug)).one()
        s.add(
            NotificationTarget(
                org_id=org_id, kind="webhook", url="https://hooks.example.test/x", events=[]
            )
        )

    def count(decision: str, rule: str) -> float:
        value: float = metrics.SUBMISSIONS.labels(decision=decision, rule=rule)._value.get()
        return value

    before = (
        count("accepted", "none"),
        count("held", "user_concurrency"),
        count("rejected", "queue_within_limit"),
    )
    first = submit_ok(org, alice)
    submit_ok(org, alice)
    assert org.submit(alice).status_code == 429
    after = (
        count("accepted", "none"),
        count("held", "user_concurrency"),
        count("rejected", "queue_within_limit"),
    )
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]

    fake._set(uuid.UUID(first["flow_run_id"]), StateType.FAILED, "Failed", "exit code 3")
    dispatcher(api.db, fake).run_once()
    assert org.job(alice, first["id"])["reason"] == "exit code 3"
    with api.db.session(write=False) as s:
        events = [(o.event, o.payload) for o in s.scalars(select(NotificationOutbox))]
    failed = [p for e, p in events if e == "job.failed"]
    assert len(failed) == 1
    assert failed[0]["job_id"] == first["id"] and failed[0]["reason"] == "exit code 3"
    assert failed[0]["user"] == alice.name and failed[0]["deployment"] == "train"
