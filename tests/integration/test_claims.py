"""The claim gate (`POST /agent/claims`) and what happens to runs on machines that stop
working, against the session's real Prefect server. No worker runs here: the tests play
the agent's part with its machine token, so every decision and every Prefect state the
control plane writes can be checked exactly."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from flows import claims
from flows.gateway import HELD_STATE_NAME, REJECTED_STATE_NAME, PrefectGateway, StateType
from flows.models import Job
from orgs.db import Database, utcnow
from orgs.models import Machine
from tests.integration.test_jobs_support import OrgSetup, jobs_app, limits_doc, setup_org
from tests.support import ApiClient, Person

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect"), pytest.mark.timeout(180)]


@dataclass
class World:
    org: OrgSetup
    member: Person
    gateway: PrefectGateway

    @property
    def api(self) -> ApiClient:
        return self.org.api

    def machine(self, name: str = "", machine_type: str = "cpu", slots: int = 2) -> Agent:
        r = self.api.post(
            f"/orgs/{self.org.slug}/machines",
            self.member,
            json={
                "name": name or f"m-{uuid.uuid4().hex[:6]}",
                "machine_type": machine_type,
                "slots": slots,
                "hardware": {},
            },
        )
        assert r.status_code == 201, r.text
        body = r.json()
        return Agent(self, body["machine"]["id"], body["machine_token"])

    def submit(self, **body: Any) -> dict[str, Any]:
        r = self.org.submit(self.member, **body)
        assert r.status_code == 201, r.text
        job: dict[str, Any] = r.json()
        return job

    def job_row(self, job_id: str) -> Job:
        with self.api.db.session(write=False) as s:
            job = s.get(Job, uuid.UUID(job_id))
            assert job is not None
            return job

    def run(self, flow_run_id: str | uuid.UUID) -> Any:
        return self.gateway.read_flow_run(uuid.UUID(str(flow_run_id)))


@dataclass
class Agent:
    world: World
    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def claim(self, flow_run_id: str | uuid.UUID, running: int | None = 0) -> Any:
        body: dict[str, Any] = {"flow_run_id": str(flow_run_id)}
        if running is not None:
            body["running"] = running
        return self.world.api.client.post("/api/v1/agent/claims", headers=self.headers, json=body)

    def heartbeat(self, running: list[str]) -> Any:
        return self.world.api.client.post(
            "/api/v1/agent/heartbeat", headers=self.headers, json={"running": running}
        )


def _slug() -> str:
    return f"cl{uuid.uuid4().hex[:8]}"


@pytest.fixture
def world(sqlite_database: Database, prefect_gateway: PrefectGateway) -> Iterator[World]:
    with jobs_app(sqlite_database, prefect_gateway) as api:
        org = setup_org(
            api, _slug(), limits_doc(concurrent=2, types={"cpu": (10, 5), "gpu": (2, 1)})
        )
        r = api.put(
            f"/orgs/{org.slug}/settings",
            org.owner,
            json={"machines": {"approval_required": False, "offline_after_s": 5}},
        )
        assert r.status_code == 200, r.text
        org.deploy()
        member = org.add_member()
        yield World(org, member, prefect_gateway)


def test_a_claim_grants_the_jobs_limits_once(world: World) -> None:
    agent = world.machine()
    job = world.submit(resources={"memory_mb": 512, "max_runtime_s": 60})
    r = agent.claim(job["flow_run_id"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"] == "run" and body["job_id"] == job["id"]
    assert body["limits"] == {"memory_mb": 512, "max_runtime_s": 60}
    assert body["user"] == world.member.name
    assert body["org"] == world.org.slug and body["inputs"] == 0
    assert body["job_token"].startswith("cs_j_")  # the flow's own credential
    row = world.job_row(job["id"])
    assert row.state == "running" and str(row.machine_id) == agent.id and row.claimed_at
    # The same machine asking again (a lost answer) gets the same yes ...
    assert agent.claim(job["flow_run_id"]).json()["job_id"] == job["id"]
    # ... another machine is told to leave it.
    other = world.machine()
    r = other.claim(job["flow_run_id"])
    assert r.status_code == 409 and r.json()["decision"] == "skip"
    assert world.run(job["flow_run_id"]).state_type is StateType.SCHEDULED


def test_machines_that_may_not_take_it_are_told_to_skip(world: World) -> None:
    job = world.submit()
    gpu = world.machine(machine_type="gpu")
    r = gpu.claim(job["flow_run_id"])
    assert r.status_code == 409 and r.json()["decision"] == "skip"
    assert "'cpu' machine" in r.json()["detail"]
    full = world.machine(slots=2)
    r = full.claim(job["flow_run_id"], running=2)
    assert r.status_code == 409 and "2 of its 2 slots" in r.json()["detail"]
    assert world.job_row(job["id"]).state == "scheduled"


def test_a_pending_machine_claims_nothing(world: World) -> None:
    r = world.api.put(
        f"/orgs/{world.org.slug}/settings",
        world.org.owner,
        json={"machines": {"approval_required": True}},
    )
    assert r.status_code == 200
    agent = world.machine()
    job = world.submit()
    r = agent.claim(job["flow_run_id"])
    assert r.status_code == 403 and r.json()["error"] == "machine_not_approved"
    assert world.job_row(job["id"]).state == "scheduled"


def test_over_a_limit_at_claim_time_the_run_is_held_with_the_reason(world: World) -> None:
    agent = world.machine()
    first, second = world.submit(), world.submit()
    assert agent.claim(first["flow_run_id"]).status_code == 200
    world.org.set_limits(limits_doc(concurrent=1))  # lowered after both were admitted
    r = agent.claim(second["flow_run_id"], running=1)
    assert r.status_code == 409 and r.json()["decision"] == "hold"
    assert r.json()["rule"] == "user_concurrency"
    run = world.run(second["flow_run_id"])
    assert run.state_name == HELD_STATE_NAME and "max_concurrent_jobs_per_user" in run.message
    assert world.job_row(second["id"]).state == "held"


def test_another_orgs_run_is_not_found_and_untouched(
    world: World, sqlite_database: Database
) -> None:
    agent = world.machine()
    other = setup_org(world.api, _slug(), limits_doc())
    other.deploy()
    theirs = other.submit(other.owner)
    assert theirs.status_code == 201, theirs.text
    run_id = theirs.json()["flow_run_id"]
    r = agent.claim(run_id)
    assert r.status_code == 404 and r.json()["error"] == "flow_run_not_found"
    assert agent.claim(uuid.uuid4()).status_code == 404  # a run that does not exist
    assert world.run(run_id).state_type is StateType.SCHEDULED
    with sqlite_database.session(write=False) as s:
        assert s.scalars(select(Job.state).where(Job.flow_run_id == uuid.UUID(run_id))).one() == (
            "scheduled"
        )


def _deployment_id(world: World) -> uuid.UUID:
    r = world.api.get(f"/orgs/{world.org.slug}/deployments", world.org.owner)
    return uuid.UUID(r.json()["items"][0]["prefect_deployment_id"])


def test_a_run_made_in_prefect_is_refused_whatever_its_tags_say(world: World) -> None:
    """Identity comes from the ledger, never from tags: a run the control plane did not
    create or admit is cancelled with the reason, even when it names a real member (or
    another organization) in its tags."""
    agent = world.machine()
    for tags in (
        [f"user:{world.member.name}"],
        [f"org:{world.org.slug}", f"user:{world.org.owner.name}", "type:cpu"],
        [],
    ):
        run = world.gateway.create_flow_run(
            _deployment_id(world), idempotency_key=str(uuid.uuid4()), tags=tags
        )
        r = agent.claim(run.id)
        assert r.status_code == 403 and r.json()["decision"] == "reject", r.text
        after = world.run(run.id)
        assert after.state_type is StateType.CANCELLED and after.state_name == REJECTED_STATE_NAME
        assert "did not create or admit this run" in (after.message or "")
    with world.api.db.session(write=False) as s:
        assert s.scalars(select(Job).where(Job.source == "prefect")).all() == []


def test_removing_a_machine_cancels_its_runs(world: World, sqlite_database: Database) -> None:
    agent = world.machine()
    job = world.submit()
    assert agent.claim(job["flow_run_id"]).status_code == 200
    r = world.api.delete(f"/orgs/{world.org.slug}/machines/{agent.id}", world.member)
    assert r.status_code == 204
    row = world.job_row(job["id"])
    assert row.state == "cancelling" and "removed" in row.reason
    # Never started in Prefect: cancelled there at once; the sweep settles the ledger.
    assert world.run(job["flow_run_id"]).state_type is StateType.CANCELLED
    with sqlite_database.session() as s:
        report = claims.sweep_offline_machines(s, world.gateway)
    assert report.settled == [uuid.UUID(job["id"])]
    assert world.job_row(job["id"]).state == "cancelled"
    assert agent.heartbeat([]).status_code == 401


def test_a_machine_gone_offline_has_its_runs_crashed(
    world: World, sqlite_database: Database
) -> None:
    agent = world.machine()
    job = world.submit()
    assert agent.claim(job["flow_run_id"]).status_code == 200
    assert agent.heartbeat([job["flow_run_id"]]).status_code == 200
    with sqlite_database.session() as s:  # still online: nothing to do
        assert claims.sweep_offline_machines(s, world.gateway).crashed == []
    with sqlite_database.transaction() as s:
        s.execute(
            update(Machine)
            .where(Machine.id == uuid.UUID(agent.id))
            .values(last_heartbeat_at=utcnow() - timedelta(seconds=6))
        )
    with sqlite_database.session() as s:
        report = claims.sweep_offline_machines(s, world.gateway)
    assert report.settled == [uuid.UUID(job["id"])]
    row = world.job_row(job["id"])
    assert row.state == "crashed" and "went offline" in row.reason
    assert world.run(job["flow_run_id"]).state_type is StateType.CRASHED


def test_a_restarted_agent_without_the_run_has_it_crashed(world: World) -> None:
    agent = world.machine()
    job = world.submit()
    assert agent.claim(job["flow_run_id"]).status_code == 200
    with world.api.db.transaction() as s:  # claimed a while ago
        s.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job["id"]))
            .values(claimed_at=utcnow() - timedelta(seconds=30))
        )
    assert agent.heartbeat([]).status_code == 200
    row = world.job_row(job["id"])
    assert row.state == "crashed" and "restarted" in row.reason


def test_an_owner_leaving_marks_the_runs_on_their_machines_for_cancellation(
    world: World,
) -> None:
    agent = world.machine()
    job = world.submit()
    assert agent.claim(job["flow_run_id"]).status_code == 200
    r = world.api.post(f"/orgs/{world.org.slug}/leave", world.member)
    assert r.status_code == 204, r.text
    row = world.job_row(job["id"])
    assert row.state in ("cancelling", "cancelled"), row.state
