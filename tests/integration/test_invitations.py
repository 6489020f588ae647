"""Invitations: create, list, revoke, accept; distinct errors; who may invite; concurrency."""

from __future__ import annotations

import hashlib
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from api.app import create_app
from orgs.config import get_settings
from orgs.models import AuditEvent, Invitation, Membership, Organization
from tests.support import ApiClient, Person, serve_in_thread


def _invite(api: ApiClient, slug: str, who: Person, **body: object) -> dict[str, Any]:
    r = api.post(f"/orgs/{slug}/invitations", who, json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def _actions(api: ApiClient, slug: str) -> list[str]:
    with api.db.session() as s:
        org_id = s.scalars(select(Organization.id).where(Organization.slug == slug)).one()
        return list(
            s.scalars(
                select(AuditEvent.action).where(AuditEvent.org_id == org_id).order_by(AuditEvent.id)
            )
        )


def _uses(api: ApiClient, invitation_id: str) -> int:
    with api.db.session() as s:
        inv = s.get(Invitation, uuid.UUID(invitation_id))
        assert inv is not None
        return inv.uses


def test_full_flow_code_shown_once_and_stored_hashed(api: ApiClient) -> None:
    alice, bob = api.signup("alice"), api.signup("bob")
    slug = api.create_org(alice, "Acme")
    before = datetime.now(UTC)
    body = _invite(api, slug, alice)
    assert set(body) == {"id", "code", "link", "role", "expires_at", "max_uses", "uses"}
    code = body["code"]
    assert code.startswith("cs_i_") and len(code.split("_", 2)[2]) >= 43
    assert body["link"] == f"{get_settings().public_url}/invitations/{code}"
    # One use unless its creator (or the org's invitations.default_max_uses) says otherwise.
    assert body["role"] == "member" and body["max_uses"] == 1 and body["uses"] == 0
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(hours=167) < expires - before <= timedelta(hours=168, minutes=1)

    with api.db.session() as s:
        inv = s.scalars(select(Invitation)).one()
        assert inv.code_hash == hashlib.sha256(code.encode()).hexdigest()
        assert inv.prefix == code[:12]

    r = api.post(f"/invitations/{code}/accept", bob)
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "member"
    assert r.json()["org"]["slug"] == slug and r.json()["org"]["role"] == "member"
    members = api.get(f"/orgs/{slug}/members", bob).json()["items"]
    assert {m["user"]["name"]: m["role"] for m in members} == {"alice": "owner", "bob": "member"}

    listed = api.get(f"/orgs/{slug}/invitations", alice)
    assert listed.status_code == 200
    page = listed.json()
    assert page["total"] == 1 and page["limit"] == 100 and page["offset"] == 0
    (item,) = page["items"]
    assert item["id"] == body["id"] and item["prefix"] == code[:12]
    # Its one use is spent (the default).
    assert item["state"] == "used_up" and item["uses"] == 1
    assert "code" not in item and code not in listed.text
    assert _actions(api, slug) == ["org.created", "invitation.created", "member.joined"]


def test_distinct_errors_for_unusable_codes(api: ApiClient) -> None:
    alice, bob, carol = api.signup("alice"), api.signup("bob"), api.signup("carol")
    slug = api.create_org(alice)

    r = api.post("/invitations/cs_i_not-a-real-code/accept", bob)
    assert r.status_code == 404 and r.json()["error"] == "invitation_not_found"

    revoked = _invite(api, slug, alice)
    assert api.delete(f"/orgs/{slug}/invitations/{revoked['id']}", alice).status_code == 204
    r = api.post(f"/invitations/{revoked['code']}/accept", bob)
    assert r.status_code == 409 and r.json()["error"] == "invitation_revoked"

    expired = _invite(api, slug, alice)
    with api.db.transaction() as s:
        s.execute(
            update(Invitation)
            .where(Invitation.id == uuid.UUID(expired["id"]))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    r = api.post(f"/invitations/{expired['code']}/accept", bob)
    assert r.status_code == 409 and r.json()["error"] == "invitation_expired"

    single = _invite(api, slug, alice, max_uses=1)
    assert api.post(f"/invitations/{single['code']}/accept", bob).status_code == 200
    r = api.post(f"/invitations/{single['code']}/accept", carol)
    assert r.status_code == 409 and r.json()["error"] == "invitation_used_up"

    # Already a member: refused, and no use is consumed.
    multi = _invite(api, slug, alice, max_uses=3)
    r = api.post(f"/invitations/{multi['code']}/accept", bob)
    assert r.status_code == 409 and r.json()["error"] == "already_member"
    assert _uses(api, multi["id"]) == 0

    states = {
        i["id"]: i["state"] for i in api.get(f"/orgs/{slug}/invitations", alice).json()["items"]
    }
    assert states == {
        revoked["id"]: "revoked",
        expired["id"]: "expired",
        single["id"]: "used_up",
        multi["id"]: "active",
    }


def test_revoke_is_idempotent_and_audited_once(api: ApiClient) -> None:
    alice = api.signup("alice")
    slug = api.create_org(alice)
    inv = _invite(api, slug, alice)
    for _ in range(2):
        assert api.delete(f"/orgs/{slug}/invitations/{inv['id']}", alice).status_code == 204
    assert _actions(api, slug).count("invitation.revoked") == 1
    r = api.delete(f"/orgs/{slug}/invitations/{uuid.uuid4()}", alice)
    assert r.status_code == 404 and r.json()["error"] == "invitation_not_found"
    assert api.delete(f"/orgs/{slug}/invitations/not-a-uuid", alice).status_code == 422


def test_roles_an_invitation_may_grant(api: ApiClient) -> None:
    owner, admin, newbie = api.signup("owner"), api.signup("admin"), api.signup("newbie")
    slug = api.create_org(owner)
    api.add_member(slug, owner, admin, role="admin")

    for who in (owner, admin):
        r = api.post(f"/orgs/{slug}/invitations", who, json={"role": "owner"})
        assert r.status_code == 422 and r.json()["field"] == "role"
    r = api.post(f"/orgs/{slug}/invitations", admin, json={"role": "admin"})
    assert r.status_code == 403
    assert _invite(api, slug, admin, role="member")["role"] == "member"

    code = _invite(api, slug, owner, role="admin")["code"]
    r = api.post(f"/invitations/{code}/accept", newbie)
    assert r.status_code == 200 and r.json()["role"] == "admin"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"expires_in_hours": 0}, "expires_in_hours"),
        ({"expires_in_hours": 24 * 365 + 1}, "expires_in_hours"),
        ({"max_uses": 0}, "max_uses"),
        ({"max_uses": 10_001}, "max_uses"),
        ({"max_uses": -1}, "max_uses"),
        ({"role": "emperor"}, "role"),
        ({"expires_in_hours": "soon"}, "expires_in_hours"),
    ],
)
def test_bounds(api: ApiClient, body: dict[str, Any], field: str) -> None:
    alice = api.signup("alice")
    slug = api.create_org(alice)
    r = api.post(f"/orgs/{slug}/invitations", alice, json=body)
    assert r.status_code == 422 and r.json()["field"] == field, r.text
    with api.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Invitation)) == 0


def test_expiry_bounds_and_default_from_settings(api: ApiClient) -> None:
    alice = api.signup("alice")
    slug = api.create_org(alice)
    assert _invite(api, slug, alice, expires_in_hours=1, max_uses=10_000)["max_uses"] == 10_000
    assert _invite(api, slug, alice, expires_in_hours=24 * 365, max_uses=None)["max_uses"] is None
    r = api.put(f"/orgs/{slug}/settings", alice, json={"invitations": {"default_expiry_hours": 2}})
    assert r.status_code == 200, r.text
    before = datetime.now(UTC)
    expires = datetime.fromisoformat(_invite(api, slug, alice)["expires_at"])
    assert timedelta(hours=1, minutes=59) < expires - before <= timedelta(hours=2, minutes=1)


def test_who_may_invite_setting(api: ApiClient) -> None:
    owner, admin, member = api.signup("owner"), api.signup("admin"), api.signup("member")
    guest = api.signup("guest")
    slug = api.create_org(owner)
    api.add_member(slug, owner, admin, role="admin")
    api.add_member(slug, owner, member)

    # Default "admins": members may not invite, and see no invitations.
    r = api.post(f"/orgs/{slug}/invitations", member, json={})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert api.get(f"/orgs/{slug}/invitations", member).json()["items"] == []

    r = api.put(
        f"/orgs/{slug}/settings", admin, json={"invitations": {"who_may_invite": "members"}}
    )
    assert r.status_code == 200, r.text
    mine = _invite(api, slug, member)
    assert mine["role"] == "member"
    r = api.post(f"/orgs/{slug}/invitations", member, json={"role": "admin"})
    assert r.status_code == 403
    # Members list only their own invitations; admins all; revoking stays with admins.
    listed = api.get(f"/orgs/{slug}/invitations", member).json()["items"]
    assert [i["id"] for i in listed] == [mine["id"]]
    assert len(api.get(f"/orgs/{slug}/invitations", admin).json()["items"]) == 3
    assert api.delete(f"/orgs/{slug}/invitations/{mine['id']}", member).status_code == 403
    assert api.post(f"/invitations/{mine['code']}/accept", guest).status_code == 200

    r = api.put(f"/orgs/{slug}/settings", admin, json={"invitations": {"who_may_invite": "admins"}})
    assert r.status_code == 200
    assert api.post(f"/orgs/{slug}/invitations", member, json={}).status_code == 403


def test_outsiders_and_anonymous(api: ApiClient) -> None:
    alice, mallory = api.signup("alice"), api.signup("mallory")
    slug = api.create_org(alice)
    code = _invite(api, slug, alice)["code"]
    r = api.post(f"/orgs/{slug}/invitations", mallory, json={})
    assert r.status_code == 404 and r.json()["error"] == "org_not_found"
    assert api.get(f"/orgs/{slug}/invitations", mallory).status_code == 404
    assert api.post(f"/invitations/{code}/accept").status_code == 401
    assert _uses(api, api.get(f"/orgs/{slug}/invitations", alice).json()["items"][0]["id"]) == 0


def test_deleting_the_org_removes_its_invitations(api: ApiClient) -> None:
    alice, bob = api.signup("alice"), api.signup("bob")
    slug = api.create_org(alice, "Doomed")
    code = _invite(api, slug, alice)["code"]
    r = api.request("DELETE", f"/orgs/{slug}", alice, json={"confirm": "Doomed"})
    assert r.status_code == 204
    r = api.post(f"/invitations/{code}/accept", bob)
    assert r.status_code == 404 and r.json()["error"] == "invitation_not_found"


def test_concurrent_accepts_never_exceed_max_uses(api: ApiClient) -> None:
    """20 people accept a 5-use invitation at the same moment: exactly 5 get in."""
    owner = api.signup("owner")
    slug = api.create_org(owner)
    people = [api.signup(f"racer{i:02d}") for i in range(20)]
    inv = _invite(api, slug, owner, max_uses=5)
    barrier = threading.Barrier(len(people))

    def accept(person: Person) -> httpx.Response:
        with httpx.Client(base_url=base, timeout=60) as client:
            barrier.wait()
            return client.post(f"/invitations/{inv['code']}/accept", headers=person.headers)

    with (
        serve_in_thread(create_app(get_settings(), api.db)) as base,
        ThreadPoolExecutor(max_workers=len(people)) as pool,
    ):
        responses = list(pool.map(accept, people))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [409] * 15, [r.text for r in responses]
    assert {r.json()["error"] for r in responses if r.status_code == 409} == {"invitation_used_up"}
    with api.db.session() as s:
        org_id = s.scalars(select(Organization.id).where(Organization.slug == slug)).one()
        joined = s.scalar(
            select(func.count()).select_from(Membership).where(Membership.org_id == org_id)
        )
        assert joined == 1 + 5
        joined_events = s.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.org_id == org_id, AuditEvent.action == "member.joined")
        )
        assert joined_events == 5
    assert _uses(api, inv["id"]) == 5
