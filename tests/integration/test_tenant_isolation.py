"""Tenant isolation: nobody in org A can see or touch org B, even knowing B's real ids.

Every route under /orgs/{org} is probed with B's slug (read from the app's routes, so
a route added later is covered), and A's own routes with B's ids. Each answer is 404,
and B's rows are exactly as before.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from api.app import API_PREFIX
from orgs.models import AuditEvent, Invitation, Machine, Membership, Organization
from tests.support import ApiClient, Person, insert_machine

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}
_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


def _b_state(api: ApiClient, slug: str) -> dict[str, Any]:
    with api.db.session() as s:
        org = s.scalars(select(Organization).where(Organization.slug == slug)).one()
        return {
            "org": (org.name, org.description, org.settings, org.settings_version),
            "members": sorted(
                (str(m.user_id), m.role)
                for m in s.scalars(select(Membership).where(Membership.org_id == org.id))
            ),
            "invitations": sorted(
                (str(i.id), i.uses, i.revoked_at)
                for i in s.scalars(select(Invitation).where(Invitation.org_id == org.id))
            ),
            "machines": sorted(
                (str(m.id), m.status, str(m.owner_id))
                for m in s.scalars(select(Machine).where(Machine.org_id == org.id))
            ),
            "audit": list(s.scalars(select(AuditEvent.id).where(AuditEvent.org_id == org.id))),
        }


def _two_orgs(api: ApiClient) -> tuple[str, Person, str, dict[str, str]]:
    alice = api.signup("alice")  # owns A: the strongest role there
    bob, carl = api.signup("bob"), api.signup("carl")
    a = api.create_org(alice, "Org A")
    b = api.create_org(bob, "Org B")
    api.add_member(b, bob, carl)
    r = api.post(f"/orgs/{b}/invitations", bob, json={"max_uses": 10})
    assert r.status_code == 201
    ids = {
        "user_id": carl.id,
        "owner_id": bob.id,
        "invitation_id": r.json()["id"],
        "machine_id": insert_machine(api.db, b, carl.id),
    }
    r = api.put(f"/orgs/{b}/settings", bob, json={"description": "B's secret plans"})
    assert r.status_code == 200
    return a, alice, b, ids


def _fill(path: str, slug: str, ids: dict[str, str]) -> str:
    """B's real id for every path parameter (by name, or by the segment before it)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "org":
            return slug
        segment = path[: match.start()].rstrip("/").rsplit("/", 1)[-1]
        by_segment = {
            "members": "user_id",
            "invitations": "invitation_id",
            "machines": "machine_id",
        }
        key = by_segment.get(segment, name)
        return ids.get(key, ids["invitation_id"])

    return _PARAM.sub(value, path)


def test_every_org_route_hides_org_b(api: ApiClient) -> None:
    _, alice, b, ids = _two_orgs(api)
    before = _b_state(api, b)
    # Read from the OpenAPI document: the public contract, whatever FastAPI's internals.
    schema = api.client.get("/openapi.json").json()
    probed = []
    for path, operations in schema["paths"].items():
        if "{org}" not in path:
            continue
        for method in sorted(m.upper() for m in operations if m in HTTP_METHODS):
            url = _fill(path, b, ids)
            assert url.startswith(API_PREFIX)
            r = api.client.request(method, url, headers=alice.headers, json={})
            probed.append(f"{method} {path}")
            assert r.status_code == 404, f"{method} {url}: {r.status_code} {r.text}"
            assert r.json()["error"] == "org_not_found", r.text
            assert "B's secret" not in r.text
    # At least the routes of the tenancy layer were among them.
    for expected in (
        "GET /api/v1/orgs/{org}",
        "DELETE /api/v1/orgs/{org}/members/{user_id}",
        "DELETE /api/v1/orgs/{org}/invitations/{id}",
        "GET /api/v1/orgs/{org}/audit",
        "PUT /api/v1/orgs/{org}/settings",
        "GET /api/v1/orgs/{org}/settings/versions",
    ):
        assert expected in probed
    assert _b_state(api, b) == before


def test_own_org_routes_with_b_ids_find_nothing(api: ApiClient) -> None:
    a, alice, b, ids = _two_orgs(api)
    before = _b_state(api, b)

    r = api.patch(f"/orgs/{a}/members/{ids['user_id']}", alice, json={"role": "admin"})
    assert r.status_code == 404 and r.json()["error"] == "member_not_found"
    r = api.delete(f"/orgs/{a}/members/{ids['user_id']}", alice)
    assert r.status_code == 404 and r.json()["error"] == "member_not_found"
    r = api.post(f"/orgs/{a}/transfer-ownership", alice, json={"user_id": ids["owner_id"]})
    assert r.status_code == 404 and r.json()["error"] == "member_not_found"
    r = api.delete(f"/orgs/{a}/invitations/{ids['invitation_id']}", alice)
    assert r.status_code == 404 and r.json()["error"] == "invitation_not_found"

    listed = api.get(f"/orgs/{a}/invitations", alice).json()
    assert listed["items"] == [] and listed["total"] == 0
    members = api.get(f"/orgs/{a}/members", alice).json()["items"]
    assert [m["user"]["name"] for m in members] == ["alice"]
    for key in ("user_id", "invitation_id", "machine_id", "owner_id"):
        r = api.get(f"/orgs/{a}/audit", alice, params={"target_id": ids[key]})
        assert r.status_code == 200 and r.json()["items"] == [], key
    events = api.get(f"/orgs/{a}/audit", alice).json()["items"]
    assert {e["actor"] for e in events} == {"alice"}
    settings = api.get(f"/orgs/{a}/settings", alice).json()
    assert settings["name"] == "Org A" and settings["description"] == ""
    versions = api.get(f"/orgs/{a}/settings/versions", alice).json()
    assert versions["total"] == 1
    assert _b_state(api, b) == before


def test_members_of_b_are_not_visible_through_org_listing(api: ApiClient) -> None:
    _, alice, b, _ = _two_orgs(api)
    assert b not in {o["slug"] for o in api.get("/orgs", alice).json()["items"]}
