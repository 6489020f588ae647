"""The machine registry through the API, on SQLite and PostgreSQL (no Prefect needed):
registration and its limits, approval, health from heartbeats, removal, the agent's
token-only routes, audit rows, and `orgs.machines.capacity`."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from typer.testing import CliRunner

from api.app import create_app
from api.cli.main import app as cli_app
from orgs import machines as registry
from orgs.config import get_settings
from orgs.db import utcnow
from orgs.models import AuditEvent, Machine, Organization
from tests.support import ApiClient, Person, serve_in_thread

HARDWARE = {"cpu_count": 8, "memory_mb": 16384, "gpus": [], "os": "Linux", "python": "3.11.7"}


def _org(api: ApiClient, **machines: Any) -> tuple[Person, str]:
    owner = api.signup()
    slug = api.create_org(owner)
    body: dict[str, Any] = {
        "limits": {
            "organization": {
                "limits": {"max_machines_per_user": 2},
                "machine_types": {
                    "cpu": {"max_scale": 10, "per_user_quota": 5},
                    "gpu": {"max_scale": 2, "per_user_quota": 1},
                },
            }
        }
    }
    if machines:
        body["machines"] = machines
    r = api.put(f"/orgs/{slug}/settings", owner, json=body)
    assert r.status_code == 200, r.text
    return owner, slug


def _register(
    api: ApiClient, slug: str, who: Person, name: str | None = None, **extra: Any
) -> tuple[dict[str, Any], str]:
    body = {"name": name or f"m-{uuid.uuid4().hex[:6]}", "machine_type": "cpu", "slots": 2}
    body.update(hardware=HARDWARE, **extra)
    r = api.post(f"/orgs/{slug}/machines", who, json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    return out["machine"], out["machine_token"]


def _agent(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _actions(api: ApiClient, slug: str) -> list[str]:
    with api.db.session(write=False) as s:
        org_id = s.scalars(select(Organization.id).where(Organization.slug == slug)).one()
        return list(
            s.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.org_id == org_id, AuditEvent.action.like("machine.%"))
                .order_by(AuditEvent.id)
            )
        )


def test_register_pending_then_approve_and_list(api: ApiClient) -> None:
    owner, slug = _org(api)
    member = api.signup()
    api.add_member(slug, owner, member)
    machine, token = _register(api, slug, member, "workstation-1")
    assert token.startswith("cs_m_") and len(token) > 40
    assert machine["status"] == "pending" and machine["health"] == "offline"
    assert machine["owner"]["name"] == member.name
    assert machine["hardware"]["cpu_count"] == 8
    assert machine["work_pool"] == f"{slug}-cpu"
    with api.db.session(write=False) as s:
        stored = s.get(Machine, uuid.UUID(machine["id"]))
        assert stored is not None and token not in (stored.token_hash, str(stored.hardware))

    # Members see the org's machines; only admins approve.
    listed = api.get(f"/orgs/{slug}/machines", member).json()
    assert [m["name"] for m in listed["items"]] == ["workstation-1"]
    r = api.post(f"/orgs/{slug}/machines/{machine['id']}/approve", member)
    assert r.status_code == 403
    r = api.post(f"/orgs/{slug}/machines/{machine['id']}/approve", owner)
    assert r.status_code == 200 and r.json()["status"] == "approved"
    # Repeating a decision changes nothing and records nothing.
    assert api.post(f"/orgs/{slug}/machines/{machine['id']}/approve", owner).status_code == 200
    assert _actions(api, slug) == ["machine.registered", "machine.approved"]

    outsider = api.signup()
    assert api.get(f"/orgs/{slug}/machines", outsider).status_code == 404
    assert api.get(f"/orgs/{slug}/machines/{machine['id']}", outsider).status_code == 404


def test_orgs_without_approval_approve_at_once(api: ApiClient) -> None:
    owner, slug = _org(api, approval_required=False)
    machine, _ = _register(api, slug, owner)
    assert machine["status"] == "approved"


def test_registration_limits_and_bad_input(api: ApiClient) -> None:
    owner, slug = _org(api)
    _register(api, slug, owner, "one")
    _register(api, slug, owner, "two")
    r = api.post(
        f"/orgs/{slug}/machines",
        owner,
        json={"name": "three", "machine_type": "cpu", "slots": 1, "hardware": {}},
    )
    assert r.status_code == 429
    assert "max_machines_per_user" in r.json()["detail"] and "2 of 2" in r.json()["detail"]

    other = api.signup()
    api.add_member(slug, owner, other)
    _register(api, slug, other, "mine")
    r = api.post(
        f"/orgs/{slug}/machines",
        other,
        json={"name": "mine", "machine_type": "cpu", "slots": 1, "hardware": {}},
    )
    assert r.status_code == 409 and r.json()["error"] == "machine_name_taken"
    r = api.post(
        f"/orgs/{slug}/machines",
        other,
        json={"name": "tpu-box", "machine_type": "tpu", "slots": 1, "hardware": {}},
    )
    assert r.status_code == 422 and r.json()["field"] == "machine_type"
    assert "known: cpu, gpu" in r.json()["detail"]
    for bad in (
        {"name": "../etc", "machine_type": "cpu"},
        {"name": "x", "machine_type": "cpu", "slots": 0},
    ):
        r = api.post(f"/orgs/{slug}/machines", other, json={"hardware": {}, **bad})
        assert r.status_code == 422, r.text
    huge = {"blob": "x" * 20_000}
    r = api.post(
        f"/orgs/{slug}/machines",
        other,
        json={"name": "big", "machine_type": "cpu", "slots": 1, "hardware": huge},
    )
    assert r.status_code == 422 and r.json()["field"] == "hardware"


def test_a_rejected_machine_frees_its_place_and_is_told_why(api: ApiClient) -> None:
    owner, slug = _org(api)
    machine, token = _register(api, slug, owner, "one")
    _register(api, slug, owner, "two")
    r = api.post(
        f"/orgs/{slug}/machines/{machine['id']}/reject", owner, json={"reason": "unknown box"}
    )
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    _register(api, slug, owner, "three")  # the rejected one no longer takes a place
    me = api.client.get("/api/v1/agent/me", headers=_agent(token)).json()
    assert me["status"] == "rejected" and me["approved"] is False
    assert "unknown box" in me["reason"] and me["prefect"] is None
    r = api.client.post(
        "/api/v1/agent/claims", headers=_agent(token), json={"flow_run_id": str(uuid.uuid4())}
    )
    assert r.status_code == 403 and r.json()["error"] == "machine_rejected"
    assert "machine.rejected" in _actions(api, slug)


def test_removing_machines_own_and_others(api: ApiClient) -> None:
    owner, slug = _org(api)
    member, other = api.signup(), api.signup()
    api.add_member(slug, owner, member)
    api.add_member(slug, owner, other)
    mine, token = _register(api, slug, member)
    theirs, _ = _register(api, slug, other)
    assert api.delete(f"/orgs/{slug}/machines/{theirs['id']}", member).status_code == 403
    assert api.delete(f"/orgs/{slug}/machines/{mine['id']}", member).status_code == 204
    assert api.get(f"/orgs/{slug}/machines/{mine['id']}", member).status_code == 404
    assert api.delete(f"/orgs/{slug}/machines/{theirs['id']}", owner).status_code == 204
    # The removed machine's token is dead: heartbeats get 401 saying why, nothing is
    # recorded.
    r = api.client.post("/api/v1/agent/heartbeat", headers=_agent(token), json={"running": []})
    assert r.status_code == 401 and r.json()["error"] == "machine_removed"
    assert "was removed" in r.json()["detail"]
    assert _actions(api, slug).count("machine.removed") == 2

    # The reason is kept for 30 days, then the token is only unknown.
    with api.db.session() as session:
        assert registry.prune_retired_tokens(session, utcnow()) == 0
    with api.db.session() as session:
        later = utcnow() + registry.RETIRED_TOKEN_KEEP + timedelta(minutes=1)
        assert registry.prune_retired_tokens(session, later) == 2
    r = api.client.post("/api/v1/agent/heartbeat", headers=_agent(token), json={"running": []})
    assert r.status_code == 401 and r.json()["error"] == "bad_machine_token"


def test_a_dead_token_says_why_it_died(api: ApiClient) -> None:
    """The agent is told which end it met (agents.agent exits 3 on each), by a stable
    code: its owner left or was removed, or the organization was deleted."""
    owner, slug = _org(api, approval_required=False)
    leaver, removed = api.signup(), api.signup()
    api.add_member(slug, owner, leaver)
    api.add_member(slug, owner, removed)
    _, leaver_token = _register(api, slug, leaver)
    _, removed_token = _register(api, slug, removed)
    _, owner_token = _register(api, slug, owner)
    assert api.post(f"/orgs/{slug}/leave", leaver).status_code == 204
    assert api.delete(f"/orgs/{slug}/members/{removed.id}", owner).status_code == 204
    name = api.get(f"/orgs/{slug}", owner).json()["name"]
    r = api.request("DELETE", f"/orgs/{slug}", owner, json={"confirm": name})
    assert r.status_code == 204, r.text
    for token, code, says in (
        (leaver_token, "owner_not_member", "no longer a member"),
        (removed_token, "owner_not_member", "no longer a member"),
        (owner_token, "org_deleted", f"organization '{slug}'"),
    ):
        r = api.client.post("/api/v1/agent/heartbeat", headers=_agent(token), json={"running": []})
        assert r.status_code == 401 and r.json()["error"] == code, r.text
        assert says in r.json()["detail"]
    # A token nobody ever issued is still just unknown.
    r = api.client.get("/api/v1/agent/me", headers=_agent("cs_m_" + "B" * 43))
    assert r.status_code == 401 and r.json()["error"] == "bad_machine_token"


def test_agent_routes_take_only_machine_tokens(api: ApiClient) -> None:
    owner, slug = _org(api, approval_required=False)
    _, token = _register(api, slug, owner)
    forged = "cs_m_" + "A" * 43
    for headers in ({}, _agent(forged), owner.headers, _agent("not-a-token")):
        for method, path, body in (
            ("GET", "/api/v1/agent/me", None),
            ("POST", "/api/v1/agent/heartbeat", {"running": []}),
            ("POST", "/api/v1/agent/claims", {"flow_run_id": str(uuid.uuid4())}),
        ):
            r = api.client.request(method, path, headers=headers, json=body)
            assert r.status_code == 401, (headers, path, r.text)
    me = api.client.get("/api/v1/agent/me", headers=_agent(token)).json()
    assert me["approved"] is True and me["work_pool"] == f"{slug}-cpu"
    # Approved machines reach Prefect through the server's proxy, with no Prefect secret.
    assert me["prefect"] == {"api_url": None, "auth_string": None}


def test_heartbeats_make_a_machine_online_then_offline(api: ApiClient) -> None:
    owner, slug = _org(api, approval_required=False, offline_after_s=5)
    machine, token = _register(api, slug, owner)
    run = str(uuid.uuid4())
    r = api.client.post("/api/v1/agent/heartbeat", headers=_agent(token), json={"running": [run]})
    assert r.status_code == 200, r.text
    assert r.json()["heartbeat_interval_s"] <= 5 / 3
    shown = api.get(f"/orgs/{slug}/machines/{machine['id']}", owner).json()
    assert shown["health"] == "online" and shown["running_jobs"] == 1
    assert shown["free_slots"] == 1 and shown["idle"] is False
    with api.db.transaction() as s:
        s.execute(
            update(Machine)
            .where(Machine.id == uuid.UUID(machine["id"]))
            .values(last_heartbeat_at=utcnow() - timedelta(seconds=6))
        )
    shown = api.get(f"/orgs/{slug}/machines/{machine['id']}", owner).json()
    assert shown["health"] == "offline" and shown["free_slots"] == 0


def test_capacity_counts_approved_online_free_slots(api: ApiClient) -> None:
    owner, slug = _org(api, offline_after_s=30)
    online, online_token = _register(api, slug, owner, "online", slots=4)
    _, pending_token = _register(api, slug, owner, "pending", slots=8)
    api.post(f"/orgs/{slug}/machines/{online['id']}/approve", owner)
    api.client.post(
        "/api/v1/agent/heartbeat",
        headers=_agent(online_token),
        json={"running": [str(uuid.uuid4())]},
    )
    api.client.post("/api/v1/agent/heartbeat", headers=_agent(pending_token), json={})
    with api.db.session(write=False) as s:
        org = s.scalars(select(Organization).where(Organization.slug == slug)).one()
        cap = registry.capacity(s, org)
    assert (cap.total_machines, cap.approved, cap.online, cap.free_slots) == (2, 1, 1, 3)
    assert dict(cap.free_slots_by_type) == {"cpu": 3}
    assert dict(cap.online_by_type) == {"cpu": 1}


def test_the_machine_cli(sqlite_api: ApiClient, tmp_path: Path) -> None:
    api = sqlite_api
    owner, slug = _org(api)
    member = api.signup()
    api.add_member(slug, owner, member)
    _register(api, slug, member, "lab-box")
    runner = CliRunner()
    app_ = create_app(get_settings(), api.db)
    with serve_in_thread(app_) as url:

        def cli(who: Person, *args: str) -> Any:
            env = {
                "CSHARE_API_URL": url.removesuffix("/api/v1"),
                "CSHARE_TOKEN": who.token,
                "CSHARE_ORG": slug,
                "CSHARE_CONFIG": str(tmp_path / "cli.json"),
                "COLUMNS": "240",
            }
            return runner.invoke(cli_app, list(args), env=env)

        listed = cli(member, "machine", "list", "--json")
        assert listed.exit_code == 0, listed.output
        assert [m["name"] for m in json.loads(listed.output)["items"]] == ["lab-box"]
        shown = cli(member, "machine", "show", "lab-box")
        assert shown.exit_code == 0 and "pending" in shown.output and "8" in shown.output
        refused = cli(member, "machine", "approve", "lab-box")
        assert refused.exit_code == 1 and "Only admins" in refused.output
        assert cli(owner, "machine", "approve", "lab-box").exit_code == 0
        rejected = cli(owner, "machine", "reject", "lab-box", "--reason", "wrong room")
        assert rejected.exit_code == 0, rejected.output
        assert "wrong room" in cli(owner, "machine", "show", "lab-box").output
        missing = cli(owner, "machine", "show", "no-such-box")
        assert missing.exit_code == 1 and "No machine named" in missing.output
        assert cli(member, "machine", "remove", "lab-box", "--yes").exit_code == 0
        assert json.loads(cli(owner, "machine", "list", "--json").output)["items"] == []
