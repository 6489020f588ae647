"""Elastic machine types through the API, on SQLite and PostgreSQL: attaching a capacity
provider (the operator's allowances, bounds, who may), what members see, the audit rows,
detaching; and the scaler's bookkeeping on the real database (`provision` / `retire`:
approved machine with its own token, token retired with a reason, audit events)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from orgs import capacity
from orgs.models import AuditEvent, CapacityProvider, Machine, Organization, ProvisionedMachine
from policies.errors import Conflict
from tests.integration.test_web_pages import _browser
from tests.support import ApiClient, Person

SCALING = "/orgs/{slug}/machine-types/{type}/scaling"


def _org(api: ApiClient) -> tuple[Person, Person, str]:
    owner, member = api.signup(), api.signup()
    slug = api.create_org(owner)
    api.add_member(slug, owner, member)
    types = {t: {"max_scale": 10, "per_user_quota": 5} for t in ("cpu", "gpu")}
    r = api.put(
        f"/orgs/{slug}/settings",
        owner,
        json={"limits": {"organization": {"machine_types": types}}},
    )
    assert r.status_code == 200, r.text
    return owner, member, slug


def _put(api: ApiClient, who: Person, slug: str, body: dict[str, Any], type_: str = "cpu") -> Any:
    return api.put(SCALING.format(slug=slug, type=type_), who, json=body)


def test_process_provider_needs_the_operator_and_an_admin(api: ApiClient) -> None:
    owner, member, slug = _org(api)
    body = {"provider": "process", "min_scale": 1, "max_scale": 3, "grace_period_s": 30}
    r = _put(api, owner, slug, body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "provider_not_allowed"
    assert "CSHARE_ELASTIC_PROCESS_ENABLED" in r.json()["detail"]

    api.set_settings(elastic_process_enabled=True)
    assert _put(api, member, slug, body).status_code == 403
    r = _put(api, owner, slug, body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert (out["provider"], out["min_scale"], out["max_scale"], out["grace_period_s"]) == (
        "process",
        1,
        3,
        30,
    )
    assert out["machines"] == [] and out["detached"] is False
    # Changing it answers 200 and records before and after.
    r = _put(api, owner, slug, {**body, "max_scale": 4})
    assert r.status_code == 200 and r.json()["max_scale"] == 4
    events = api.get(f"/orgs/{slug}/audit", owner, params={"action": "machine_type.scaling_set"})
    rows = events.json()["items"]
    assert [e["after"]["max_scale"] for e in rows] == [4, 3]
    assert rows[0]["before"]["max_scale"] == 3 and rows[1]["before"] is None

    # Members see it: the type list, the type, the overview.
    listed = api.get(f"/orgs/{slug}/machine-types", member).json()["items"]
    assert [(t["name"], bool(t["scaling"])) for t in listed] == [("cpu", True), ("gpu", False)]
    assert api.get(SCALING.format(slug=slug, type="cpu"), member).json()["max_scale"] == 4
    overview = api.get(f"/orgs/{slug}/overview", member).json()
    assert [s["machine_type"] for s in overview["scaling"]] == ["cpu"]
    # Strangers see nothing.
    stranger = api.signup()
    assert api.get(SCALING.format(slug=slug, type="cpu"), stranger).status_code == 404
    assert api.get(f"/orgs/{slug}/machine-types", stranger).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"provider": "process", "min_scale": 4, "max_scale": 3}, "min_scale"),
        ({"provider": "process", "max_scale": 0}, "max_scale"),
        ({"provider": "process", "grace_period_s": -1}, "grace_period_s"),
        ({"provider": "process", "grace_period_s": 8 * 86400}, "grace_period_s"),
        ({"provider": "process", "flows_dir": "relative/dir"}, "flows_dir"),
        ({"provider": "process", "image": "x"}, "provider"),
        ({"provider": "docker", "image": "agent:1"}, "engine_url"),
        (
            {"provider": "docker", "engine_url": "unix:///run/other.sock", "image": "a"},
            "engine_url",
        ),
        ({"provider": "docker", "engine_url": "unix:///run/docker.sock"}, "image"),
        ({"provider": "kubernetes"}, "provider"),
        ({"provider": "process", "surprise": 1}, "surprise"),
    ],
)
def test_bad_provider_settings_are_named(api: ApiClient, body: dict[str, Any], field: str) -> None:
    api.set_settings(elastic_process_enabled=True, elastic_docker_engines="unix:///run/docker.sock")
    owner, _, slug = _org(api)
    r = _put(api, owner, slug, body)
    assert r.status_code == 422, r.text
    assert field in r.text
    assert r.json()["error"] in ("invalid", "provider_not_allowed", "validation_error")


def test_unknown_type_and_docker_provider(api: ApiClient) -> None:
    api.set_settings(elastic_docker_engines="unix:///run/docker.sock/")
    owner, _, slug = _org(api)
    body = {
        "provider": "docker",
        "engine_url": "unix:///run/docker.sock",
        "image": "registry.example/cshare-agent:1",
        "max_scale": 2,
    }
    assert _put(api, owner, slug, body, "tpu").status_code == 404
    r = _put(api, owner, slug, body, "gpu")
    assert r.status_code == 201, r.text
    assert (r.json()["engine_url"], r.json()["network"]) == ("unix:///run/docker.sock", "host")
    assert r.json()["grace_period_s"] == 900 and r.json()["min_scale"] == 0  # the defaults


def test_detach_and_the_scalers_bookkeeping(api: ApiClient) -> None:
    api.set_settings(elastic_process_enabled=True)
    owner, _, slug = _org(api)
    assert _put(api, owner, slug, {"provider": "process", "max_scale": 2}).status_code == 201
    with api.db.transaction() as s:
        org = s.scalars(select(Organization).where(Organization.slug == slug)).one()
        provider = s.scalars(
            select(CapacityProvider).where(CapacityProvider.org_id == org.id)
        ).one()
        made = capacity.provision(s, provider, org, why="2 jobs waiting for a machine")
        machine_id, token = made.machine.id, made.token
    # An ordinary approved machine owned by the admin; its token works for the agent.
    machine = api.get(f"/orgs/{slug}/machines/{machine_id}", owner).json()
    assert machine["status"] == "approved" and machine["owner"]["name"] == owner.name
    assert api.get("/agent/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    shown = api.get(SCALING.format(slug=slug, type="cpu"), owner).json()["machines"]
    assert [(m["id"], m["phase"]) for m in shown] == [(str(machine_id), "starting")]
    # The web dashboard shows the provider, its machine and the start.
    page = _browser(api.client.app, owner).get(f"/orgs/{slug}").text
    assert "Elastic machine types" in page and f"{made.machine.name}: starting" in page
    assert "machine.scaled_up" in page

    # Detached: still listed (draining its machines) until the scaler has stopped them.
    r = api.delete(SCALING.format(slug=slug, type="cpu"), owner)
    assert r.status_code == 200 and r.json()["detached"] is True
    assert api.delete(SCALING.format(slug=slug, type="cpu"), owner).status_code == 404
    with api.db.transaction() as s:
        record = s.get(ProvisionedMachine, machine_id)
        assert record is not None
        capacity.retire(
            s, record, action="machine.scaled_down", rule="cap_at_maximum", reason="detached"
        )
    assert api.get(f"/orgs/{slug}/machines/{machine_id}", owner).status_code == 404
    r = api.get("/agent/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and r.json()["error"] == capacity.MACHINE_STOPPED
    with api.db.session(write=False) as s:
        actions = s.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.target_id == str(machine_id))
            .order_by(AuditEvent.id)
        ).all()
        assert list(actions) == ["machine.scaled_up", "machine.scaled_down"]
        assert s.get(Machine, machine_id) is None
    events = api.get(f"/orgs/{slug}/overview", owner).json()["scaling_events"]
    assert [(e["action"], e["reason"]) for e in events] == [
        ("machine.scaled_down", "detached"),
        ("machine.scaled_up", "2 jobs waiting for a machine"),
    ]


def test_no_machine_starts_on_the_authority_of_a_former_admin(api: ApiClient) -> None:
    api.set_settings(elastic_process_enabled=True)
    owner, _, slug = _org(api)
    admin = api.signup()
    api.add_member(slug, owner, admin, "admin")
    assert _put(api, admin, slug, {"provider": "process", "max_scale": 2}).status_code == 201
    r = api.patch(f"/orgs/{slug}/members/{admin.id}", owner, json={"role": "member"})
    assert r.status_code == 200, r.text
    with api.db.transaction() as s:
        org = s.scalars(select(Organization).where(Organization.slug == slug)).one()
        provider = s.scalars(
            select(CapacityProvider).where(CapacityProvider.org_id == org.id)
        ).one()
        with pytest.raises(Conflict, match="no longer an admin"):
            capacity.provision(s, provider, org, why="min_scale is 1")
    # An admin configuring it again takes it over.
    assert _put(api, owner, slug, {"provider": "process", "max_scale": 2}).status_code == 200
    with api.db.transaction() as s:
        org = s.scalars(select(Organization).where(Organization.slug == slug)).one()
        provider = s.scalars(
            select(CapacityProvider).where(CapacityProvider.org_id == org.id)
        ).one()
        made = capacity.provision(s, provider, org, why="min_scale is 1")
        assert made.machine.owner_id == provider.owner_id
