"""The Prefect API proxy against the session's real Prefect server and a real uvicorn
server of the app: Prefect's own client and CLI through `/prefect/<org>/api`, and the
attacks a member could try with every credential they hold. Each attack test passes only
when the attack fails."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from api.app import create_app
from flows.gateway import HELD_STATE_NAME, PrefectGateway
from orgs.db import Database
from tests.integration.test_jobs_support import OrgSetup, limits_doc, settings_with, setup_org
from tests.prefect_server import PREFECT, PrefectServer, _clean_env
from tests.support import ApiClient, Person, serve_in_thread

pytestmark = [
    pytest.mark.prefect,
    pytest.mark.xdist_group("prefect"),
    pytest.mark.timeout(300),
]

EPOCHS = {"epochs": 1}


@dataclass
class Stack:
    api: ApiClient
    root: str  # http://127.0.0.1:PORT
    http: httpx.Client

    def prefect_url(self, slug: str | None = None) -> str:
        return f"{self.root}/prefect/{slug}/api" if slug else f"{self.root}/prefect/api"

    def call(
        self, method: str, path: str, token: str, slug: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return self.http.request(method, self.prefect_url(slug) + path, headers=headers, **kw)


@pytest.fixture
def stack(sqlite_database: Database, prefect_gateway: PrefectGateway) -> Iterator[Stack]:
    app = create_app(settings_with(), sqlite_database, prefect_gateway)
    with (
        serve_in_thread(app) as base,
        httpx.Client(base_url=base.removesuffix("/api/v1"), timeout=60) as http,
    ):
        yield Stack(ApiClient(http, sqlite_database), base.removesuffix("/api/v1"), http)  # type: ignore[arg-type]


def _slug() -> str:
    return f"px{uuid.uuid4().hex[:8]}"


def _org(stack: Stack, concurrent: int = 1) -> OrgSetup:
    org = setup_org(stack.api, _slug(), limits_doc(concurrent=concurrent, queued=5))
    org.deploy("train")
    return org


def _machine(org: OrgSetup, owner: Person) -> tuple[str, str]:
    """(machine id, machine token) of an approved machine of `owner` in `org`."""
    r = org.api.post(
        f"/orgs/{org.slug}/machines",
        owner,
        json={
            "name": f"m-{uuid.uuid4().hex[:6]}",
            "machine_type": "cpu",
            "hardware": {},
            "slots": 2,
        },
    )
    assert r.status_code == 201, r.text
    machine_id, token = r.json()["machine"]["id"], r.json()["machine_token"]
    r = org.api.post(f"/orgs/{org.slug}/machines/{machine_id}/approve", org.owner)
    assert r.status_code == 200, r.text
    return machine_id, token


def _claim(org: OrgSetup, machine_token: str, flow_run_id: str) -> str:
    """Claim the run as the machine's agent does; returns the job token."""
    r = org.api.client.post(
        "/api/v1/agent/claims",
        json={"flow_run_id": flow_run_id, "running": 0},
        headers={"Authorization": f"Bearer {machine_token}"},
    )
    assert r.status_code == 200, r.text
    token: str = r.json()["job_token"]
    return token


def _jobs(org: OrgSetup, who: Person) -> list[dict[str, Any]]:
    r = org.api.get(f"/orgs/{org.slug}/jobs", who)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def _pending() -> dict[str, Any]:
    return {"state": {"type": "PENDING", "name": "Pending"}}


# ------------------------------------------------------------ Prefect's own client


def test_prefect_client_runs_a_deployment_through_admission(stack: Stack) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_KEY,
        PREFECT_API_URL,
        temporary_settings,
    )

    org = _org(stack, concurrent=1)
    alice = org.add_member()
    updates: dict[Any, Any] = {
        PREFECT_API_URL: stack.prefect_url(org.slug),
        PREFECT_API_KEY: alice.token,
    }
    with (
        temporary_settings(updates=updates, restore_defaults={PREFECT_API_AUTH_STRING}),
        get_client(sync_client=True) as client,
    ):
        dep = client.read_deployment_by_name("train/train")
        first = client.create_flow_run_from_deployment(dep.id, parameters=EPOCHS)
        second = client.create_flow_run_from_deployment(dep.id, parameters=EPOCHS)
        # Read back through the proxy: both are the member's own runs.
        assert client.read_flow_run(first.id).id == first.id
    assert first.state is not None and first.state.name == "Scheduled"
    assert second.state is not None and second.state.name == HELD_STATE_NAME
    assert "max_concurrent_jobs_per_user" in (second.state.message or "") or "1 of 1" in (
        second.state.message or ""
    )
    jobs = {j["flow_run_id"]: j for j in _jobs(org, alice)}
    assert jobs[str(first.id)]["state"] == "scheduled"
    held = jobs[str(second.id)]
    assert held["state"] == "held" and held["reason"] == second.state.message


def test_prefect_cli_deployment_run_is_a_submission(stack: Stack, tmp_path: Path) -> None:
    org = _org(stack, concurrent=1)
    alice = org.add_member()
    env = _clean_env()
    env.update(
        PREFECT_API_URL=stack.prefect_url(org.slug),
        PREFECT_API_KEY=alice.token,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_CLI_PROMPT="false",
    )
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            [PREFECT, "deployment", "run", "train/train", "--param", "epochs=1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout)
    jobs = _jobs(org, alice)
    assert sorted(j["state"] for j in jobs) == ["held", "scheduled"]
    held = next(j for j in jobs if j["state"] == "held")
    assert held["reason"] and held["rule"]
    for out, job in zip(outputs, sorted(jobs, key=lambda j: j["created_at"]), strict=True):
        assert job["flow_run_id"] in out  # the CLI printed the run the job owns


def test_cli_rejection_shows_the_reason(stack: Stack, tmp_path: Path) -> None:
    org = _org(stack)
    alice = org.add_member()
    env = _clean_env()
    env.update(
        PREFECT_API_URL=stack.prefect_url(org.slug),
        PREFECT_API_KEY=alice.token,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_CLI_PROMPT="false",
    )
    done = subprocess.run(
        [
            PREFECT,
            "deployment",
            "run",
            "train/train",
            "--param",
            "epochs=1",
            "--job-variable",
            'command="cat /etc/passwd"',
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode != 0
    assert "Job variables come from the deployment" in done.stdout + done.stderr
    assert _jobs(org, alice) == []


# ------------------------------------------------------------------ cross-org


def test_no_credential_of_a_member_reaches_another_org(stack: Stack) -> None:
    org_a, org_b = _org(stack, concurrent=5), _org(stack, concurrent=5)
    alice = org_a.add_member()
    b_dep = stack.call("GET", "/deployments/name/train/train", org_b.owner.token, org_b.slug)
    assert b_dep.status_code == 200, b_dep.text
    b_dep_id = b_dep.json()["id"]
    b_job = org_b.submit(org_b.owner, "train", parameters=EPOCHS).json()
    b_run = b_job["flow_run_id"]
    personal = stack.api.post("/me/tokens", alice, json={"name": "cli"}).json()["token"]
    _, machine_token = _machine(org_a, alice)
    a_job = org_a.submit(alice, "train", parameters=EPOCHS).json()
    job_token = _claim(org_a, machine_token, a_job["flow_run_id"])
    create = f"/deployments/{b_dep_id}/create_flow_run"

    for token in (alice.token, personal):
        # B's path: alice is no member there, so B does not exist for her.
        assert stack.call("POST", create, token, org_b.slug, json={}).status_code == 404
        assert (
            stack.call("GET", "/deployments/name/train/train", token, org_b.slug).status_code == 404
        )
        assert stack.call("GET", f"/flow_runs/{b_run}", token, org_b.slug).status_code == 404
        # Her own org's path, B's objects named by id.
        assert stack.call("POST", create, token, org_a.slug, json={}).status_code == 404
        assert stack.call("GET", f"/deployments/{b_dep_id}", token, org_a.slug).status_code == 403
        assert stack.call("GET", f"/flow_runs/{b_run}", token, org_a.slug).status_code == 403
        listed = stack.call("POST", "/flow_runs/filter", token, org_a.slug, json={})
        assert listed.status_code == 200 and b_run not in {r["id"] for r in listed.json()}
        named = stack.call(
            "POST",
            "/flow_runs/filter",
            token,
            org_a.slug,
            json={"flow_runs": {"id": {"any_": [b_run]}}},
        )
        assert named.status_code == 200 and named.json() == []
        # Prefect's raw run creation is a job's subflow only: never a person's.
        raw = stack.call(
            "POST", "/flow_runs/", token, org_a.slug, json={"flow_id": str(uuid.uuid4())}
        )
        assert raw.status_code == 403 and raw.json()["error"] == "member_endpoints"
    for token in (machine_token, job_token):
        for slug in (None, org_a.slug, org_b.slug):
            r = stack.call("POST", create, token, slug, json={})
            assert r.status_code == 403, (slug, r.text)
        assert stack.call("GET", f"/flow_runs/{b_run}", token).status_code == 403
        assert (
            stack.call("POST", f"/flow_runs/{b_run}/set_state", token, json=_pending()).status_code
            == 403
        )
    # The machine cannot poll B's pool, nor see B's runs on its own.
    r = stack.call(
        "POST", f"/work_pools/{org_b.slug}-cpu/get_scheduled_flow_runs", machine_token, json={}
    )
    assert r.status_code == 403 and r.json()["rule"] == "machine_own_pool"
    assert len([j for j in _jobs(org_b, org_b.owner)]) == 1  # nothing was created in B


# --------------------------------------------------------- job and machine scope


def test_job_and_machine_credentials_act_on_their_own_runs_only(stack: Stack) -> None:
    org = _org(stack, concurrent=5)
    alice, bob = org.add_member(), org.add_member()
    m1_id, m1 = _machine(org, alice)
    _, m2 = _machine(org, bob)
    run1 = org.submit(alice, "train", parameters=EPOCHS).json()["flow_run_id"]
    run2 = org.submit(bob, "train", parameters=EPOCHS).json()["flow_run_id"]
    run3 = org.submit(alice, "train", parameters=EPOCHS).json()["flow_run_id"]

    # The worker's poll shows only runs the ledger offers this machine.
    polled = stack.call("POST", f"/work_pools/{org.slug}-cpu/get_scheduled_flow_runs", m1, json={})
    assert polled.status_code == 200, polled.text
    assert {item["flow_run"]["id"] for item in polled.json()} <= {run1, run2, run3}

    job1 = _claim(org, m1, run1)
    _claim(org, m2, run2)
    polled = stack.call("POST", f"/work_pools/{org.slug}-cpu/get_scheduled_flow_runs", m1, json={})
    offered = {item["flow_run"]["id"] for item in polled.json()}
    assert run3 in offered and run2 not in offered  # machine 2 holds run2 now

    # The job token: its own run, nothing else.
    r = stack.call("POST", f"/flow_runs/{run1}/set_state", job1, json=_pending())
    assert r.status_code in (200, 201) and r.json()["status"] == "ACCEPT", r.text
    assert stack.call("GET", f"/flow_runs/{run1}", job1).status_code == 200
    for other in (run2, run3):
        r = stack.call("POST", f"/flow_runs/{other}/set_state", job1, json=_pending())
        assert r.status_code == 403 and r.json()["rule"] == "job_own_run"
        assert stack.call("GET", f"/flow_runs/{other}", job1).status_code == 403
        logs = [
            {
                "name": "x",
                "level": 20,
                "message": "hi",
                "timestamp": "2030-01-01T00:00:00Z",
                "flow_run_id": other,
            }
        ]
        assert stack.call("POST", "/logs/", job1, json=logs).status_code == 403
    own_logs = [
        {
            "name": "x",
            "level": 20,
            "message": "mine",
            "timestamp": "2030-01-01T00:00:00Z",
            "flow_run_id": run1,
        }
    ]
    assert stack.call("POST", "/logs/", job1, json=own_logs).status_code == 201
    seen = stack.call("POST", "/flow_runs/filter", job1, json={})
    assert [r["id"] for r in seen.json()] == [run1]

    # Machine 1: the run it claimed, not the one machine 2 claimed.
    r = stack.call("POST", f"/flow_runs/{run2}/set_state", m1, json=_pending())
    assert r.status_code == 403 and r.json()["rule"] == "machine_claimed_runs"
    assert stack.call("GET", f"/flow_runs/{run2}", m1).status_code == 403
    r = stack.call("POST", f"/flow_runs/{run1}/set_state", m1, json={"state": {"type": "RUNNING"}})
    assert r.status_code in (200, 201), r.text
    dep_id = stack.call("GET", f"/flow_runs/{run1}", m1).json()["deployment_id"]
    assert stack.call("GET", f"/deployments/{dep_id}", m1).status_code == 200
    assert stack.call("GET", f"/deployments/{dep_id}", job1).status_code == 200
    assert m1_id  # the machine row exists; its token is what acted

    # A member cancels only what their role allows, through the job cancel.
    cancel = {"state": {"type": "CANCELLING", "name": "Cancelling"}}
    r = stack.call("POST", f"/flow_runs/{run2}/set_state", alice.token, org.slug, json=cancel)
    assert r.status_code == 403
    r = stack.call("POST", f"/flow_runs/{run3}/set_state", alice.token, org.slug, json=cancel)
    assert r.status_code == 200 and r.json()["status"] == "ACCEPT", r.text
    states = {j["flow_run_id"]: j["state"] for j in _jobs(org, alice)}
    assert states[run3] in ("cancelled", "cancelling")
    r = stack.call("POST", f"/flow_runs/{run1}/set_state", alice.token, org.slug, json=_pending())
    assert r.status_code == 403 and r.json()["rule"] == "member_states"


def test_events_in_relays_only_the_jobs_own_run(
    stack: Stack, prefect_server: PrefectServer
) -> None:
    org = _org(stack, concurrent=5)
    alice = org.add_member()
    _, machine = _machine(org, alice)
    run1 = org.submit(alice, "train", parameters=EPOCHS).json()["flow_run_id"]
    run2 = org.submit(alice, "train", parameters=EPOCHS).json()["flow_run_id"]
    job1 = _claim(org, machine, run1)
    marker = uuid.uuid4().hex

    def event(run: str, name: str) -> str:
        return json.dumps(
            {
                "id": str(uuid.uuid4()),
                "occurred": "2030-01-01T00:00:00Z",
                "event": f"cshare.test.{name}.{marker}",
                "resource": {"prefect.resource.id": f"prefect.flow-run.{run}"},
            }
        )

    url = stack.prefect_url().replace("http://", "ws://") + "/events/in"
    with ws_connect(url, subprotocols=["prefect"]) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "auth", "token": job1}))
        assert json.loads(ws.recv(timeout=10))["type"] == "auth_success"
        ws.send(event(run2, "stolen"))
        ws.send(event(run1, "own"))
    with ws_connect(url, subprotocols=["prefect"]) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "auth", "token": "cs_j_forged"}))
        with pytest.raises(Exception):  # noqa: B017  (closed with 1008 either way)
            ws.recv(timeout=10)
    headers = {
        "Authorization": "Basic " + base64.b64encode(prefect_server.auth_string.encode()).decode()
    }
    names: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and f"cshare.test.own.{marker}" not in names:
        r = httpx.post(
            f"{prefect_server.api_url}/events/filter",
            json={
                "filter": {
                    "event": {"prefix": ["cshare.test."]},
                    "occurred": {"since": "2029-12-31T00:00:00Z", "until": "2030-01-02T00:00:00Z"},
                },
                "limit": 50,
            },
            headers=headers,
            timeout=10,
        )
        names = {e["event"] for e in r.json().get("events", [])} if r.status_code == 200 else set()
        time.sleep(1)
    assert f"cshare.test.own.{marker}" in names
    assert f"cshare.test.stolen.{marker}" not in names


def test_proxy_never_forwards_the_callers_credential_nor_leaks_prefects(stack: Stack) -> None:
    org = _org(stack)
    r = stack.call("GET", "/admin/version", org.owner.token, org.slug)
    assert r.status_code == 200
    assert "authorization" not in {k.lower() for k in r.headers}
    r = stack.http.get(stack.prefect_url(org.slug) + "/admin/version")
    assert r.status_code == 401
    r = stack.http.get(
        stack.prefect_url(org.slug) + "/admin/version", headers={"Authorization": "Bearer nope"}
    )
    assert r.status_code == 401


def _events_of(stack: Stack, slug: str, token: str, wait_s: float) -> set[str]:
    """Resource ids of the events `/events/out` relays to `token` within `wait_s`."""
    url = stack.prefect_url(slug).replace("http://", "ws://") + "/events/out"
    seen: set[str] = set()
    with ws_connect(url, subprotocols=["prefect"]) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "auth", "token": token}))
        assert json.loads(ws.recv(timeout=10))["type"] == "auth_success"
        flt = {"event": {"prefix": ["prefect.flow-run."]}}
        ws.send(json.dumps({"type": "filter", "filter": flt, "backfill": True}))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            except TimeoutError:
                break
            seen.add(message["event"]["resource"]["prefect.resource.id"])
    return seen


def test_events_out_relays_only_runs_in_scope(stack: Stack) -> None:
    org = _org(stack, concurrent=5)
    alice, bob = org.add_member(), org.add_member()
    run = org.submit(alice, "train", parameters=EPOCHS).json()["flow_run_id"]
    mine = f"prefect.flow-run.{run}"
    deadline = time.monotonic() + 60
    seen: set[str] = set()
    while mine not in seen and time.monotonic() < deadline:  # events land within ~1 s
        seen = _events_of(stack, org.slug, alice.token, 3)
    assert mine in seen
    assert all(rid == mine for rid in seen)  # nothing about anyone else's runs
    assert mine not in _events_of(stack, org.slug, bob.token, 3)


def _task_run(stack: Stack, token: str, flow_run_id: str) -> str:
    """A task run in `flow_run_id`, made as Prefect's engine makes one."""
    body = {
        "flow_run_id": flow_run_id,
        "name": f"child-{uuid.uuid4().hex[:6]}",
        "task_key": "child",
        "dynamic_key": uuid.uuid4().hex,
        "state": {"type": "PENDING", "name": "Pending"},
    }
    r = stack.call("POST", "/task_runs/", token, json=body)
    assert r.status_code in (200, 201), r.text
    task_id: str = r.json()["id"]
    return task_id


def test_a_job_makes_subflow_runs_that_act_as_the_job(stack: Stack) -> None:
    org = _org(stack, concurrent=5)
    alice, bob = org.add_member(), org.add_member()
    _, m1 = _machine(org, alice)
    run1 = org.submit(alice, "train", parameters=EPOCHS).json()["flow_run_id"]
    run2 = org.submit(bob, "train", parameters=EPOCHS).json()["flow_run_id"]
    job1, job2 = _claim(org, m1, run1), _claim(org, m1, run2)

    # As the engine does for `@flow` called inside a flow: a tracking task run in the
    # parent, the child's flow by name, then the child run under that task run.
    parent_task = _task_run(stack, job1, run1)
    r = stack.call("POST", "/flows/", job1, json={"name": "child-flow"})
    assert r.status_code in (200, 201), r.text
    flow_id = r.json()["id"]
    child_body = {
        "flow_id": flow_id,
        "parent_task_run_id": parent_task,
        "state": {"type": "PENDING", "name": "Pending"},
    }
    r = stack.call("POST", "/flow_runs/", job1, json=child_body)
    assert r.status_code in (200, 201), r.text
    child = r.json()["id"]

    # The child acts as the job: its states, task runs, logs, and the engine's reattach
    # lookup by parent task run.
    r = stack.call(
        "POST", f"/flow_runs/{child}/set_state", job1, json={"state": {"type": "RUNNING"}}
    )
    assert r.status_code in (200, 201) and r.json()["status"] == "ACCEPT", r.text
    _task_run(stack, job1, child)
    line = {"name": "x", "level": 20, "message": "child", "timestamp": "2030-01-01T00:00:00Z"}
    assert (
        stack.call("POST", "/logs/", job1, json=[{**line, "flow_run_id": child}]).status_code == 201
    )
    found = stack.call(
        "POST",
        "/flow_runs/filter",
        job1,
        json={"flow_runs": {"parent_task_run_id": {"any_": [parent_task]}}},
    )
    assert [f["id"] for f in found.json()] == [child]
    # A nested subflow is the same job's too.
    nested_task = _task_run(stack, job1, child)
    nested = {**child_body, "parent_task_run_id": nested_task}
    r = stack.call("POST", "/flow_runs/", job1, json=nested)
    assert r.status_code in (200, 201), r.text

    # Who sees the job sees the child; nobody else touches it.
    assert stack.call("GET", f"/flow_runs/{child}", alice.token, org.slug).status_code == 200
    assert stack.call("GET", f"/flow_runs/{child}", bob.token, org.slug).status_code == 403
    r = stack.call("POST", f"/flow_runs/{child}/set_state", job2, json=_pending())
    assert r.status_code == 403 and r.json()["rule"] == "job_own_run"
    # Another job cannot hang a run under this job's task run.
    r = stack.call("POST", "/flow_runs/", job2, json=child_body)
    assert r.status_code == 403 and r.json()["rule"] == "job_own_run", r.text

    # Only subflow runs: no run without a parent of its own, none routed to a pool.
    r = stack.call("POST", "/flow_runs/", job1, json={"flow_id": flow_id})
    assert r.status_code == 403 and r.json()["rule"] == "subflow_only", r.text
    own_task = _task_run(stack, job1, run1)
    for extra in ({"work_pool_name": f"{org.slug}-cpu"}, {"deployment_id": str(uuid.uuid4())}):
        body = {**child_body, "parent_task_run_id": own_task, **extra}
        r = stack.call("POST", "/flow_runs/", job1, json=body)
        assert r.status_code == 403 and r.json()["rule"] == "subflow_only", r.text
    # A person's token never makes raw runs (that would skip admission).
    r = stack.call("POST", "/flow_runs/", alice.token, org.slug, json=child_body)
    assert r.status_code == 403
