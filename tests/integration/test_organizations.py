"""Organizations and members: create, list, show, patch, delete, leave, transfer, roles."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from orgs.models import (
    AuditEvent,
    Invitation,
    Machine,
    Membership,
    Organization,
    SettingsVersion,
)
from orgs.organizations import SLUG_RE
from tests.support import ApiClient, Person, insert_machine


def _org_id(api: ApiClient, slug: str) -> uuid.UUID:
    with api.db.session() as s:
        return s.scalars(select(Organization.id).where(Organization.slug == slug)).one()


def _roles(api: ApiClient, slug: str, who: Person) -> dict[str, str]:
    r = api.get(f"/orgs/{slug}/members", who)
    assert r.status_code == 200, r.text
    return {m["user"]["name"]: m["role"] for m in r.json()["items"]}


def _machines(api: ApiClient, org_id: uuid.UUID) -> set[str]:
    with api.db.session() as s:
        return {str(i) for i in s.scalars(select(Machine.id).where(Machine.org_id == org_id))}


def _last_action(api: ApiClient, org_id: uuid.UUID) -> AuditEvent:
    with api.db.session() as s:
        event = s.scalars(
            select(AuditEvent).where(AuditEvent.org_id == org_id).order_by(AuditEvent.id.desc())
        ).first()
        assert event is not None
        return event


# --------------------------------------------------------------------------- create


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "X", "slug": "Bad Slug"}, "slug"),
        ({"name": "X", "slug": "-lead"}, "slug"),
        ({"name": "X", "slug": "trail-"}, "slug"),
        ({"name": "X", "slug": "admin"}, "slug"),  # reserved
        ({"name": "X", "slug": "a" * 41}, "slug"),
        ({"name": "X", "slug": ""}, "slug"),
        ({"name": "   "}, "name"),
        ({"name": "a" * 101}, "name"),
        ({"name": "bell\x07"}, "name"),
        ({"slug": "nameless"}, "name"),
    ],
)
def test_create_rejects_bad_slugs_and_names(
    api: ApiClient, body: dict[str, Any], field: str
) -> None:
    alice = api.signup("alice")
    r = api.post("/orgs", alice, json=body)
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_create_slugs_explicit_duplicate_and_auto(api: ApiClient) -> None:
    alice, bob = api.signup("alice"), api.signup("bob")
    r = api.post("/orgs", alice, json={"name": "Acme Corp", "slug": "acme", "description": "d"})
    assert r.status_code == 201, r.text
    assert r.json()["slug"] == "acme" and r.json()["role"] == "owner"
    assert r.json()["description"] == "d"

    r = api.post("/orgs", bob, json={"name": "Other", "slug": "acme"})
    assert r.status_code == 409 and r.json()["error"] == "slug_taken"

    r = api.post("/orgs", bob, json={"name": "Acme"})  # auto slug "acme" is taken
    assert r.status_code == 201
    auto = r.json()["slug"]
    assert auto != "acme" and auto.startswith("acme-") and SLUG_RE.match(auto)

    r = api.post("/orgs", bob, json={"name": "Settings"})  # a reserved word as a name
    assert r.status_code == 201
    assert r.json()["slug"].startswith("settings-") and SLUG_RE.match(r.json()["slug"])

    r = api.post("/orgs", bob, json={"name": "Über Team! 2024"})
    assert r.status_code == 201 and r.json()["slug"] == "ber-team-2024"

    org_id = _org_id(api, "acme")
    with api.db.session() as s:
        assert (
            s.scalar(
                select(func.count())
                .select_from(SettingsVersion)
                .where(SettingsVersion.org_id == org_id)
            )
            == 1
        )
    assert _last_action(api, org_id).action == "org.created"


def test_list_mine_with_role_and_show(api: ApiClient) -> None:
    alice, bob, carol = api.signup("alice"), api.signup("bob"), api.signup("carol")
    a = api.create_org(alice, "Alpha")
    b = api.create_org(bob, "Beta")
    api.create_org(carol, "Gamma")
    api.add_member(b, bob, alice, role="admin")

    page = api.get("/orgs", alice).json()
    assert {o["slug"]: o["role"] for o in page["items"]} == {a: "owner", b: "admin"}
    assert page["total"] == 2
    assert {o["slug"] for o in api.get("/orgs", bob).json()["items"]} == {b}

    r = api.get(f"/orgs/{b}", alice)
    assert r.status_code == 200 and r.json()["name"] == "Beta" and r.json()["role"] == "admin"
    r = api.get(f"/orgs/{a}", carol)
    assert r.status_code == 404 and r.json()["error"] == "org_not_found"
    assert api.get("/orgs/no-such-org", alice).json()["error"] == "org_not_found"
    assert api.get("/orgs").status_code == 401


def test_patch_admin_ok_member_forbidden(api: ApiClient) -> None:
    owner, admin, member = api.signup("owner"), api.signup("admin"), api.signup("member")
    slug = api.create_org(owner, "Before")
    api.add_member(slug, owner, admin, role="admin")
    api.add_member(slug, owner, member)

    r = api.patch(f"/orgs/{slug}", admin, json={"name": "After", "description": "new"})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "After" and r.json()["description"] == "new"
    assert r.json()["slug"] == slug
    event = _last_action(api, _org_id(api, slug))
    assert event.action == "org.updated" and event.actor_name == "admin"
    assert event.before is not None and event.before["name"] == "Before"
    assert event.after is not None and event.after["name"] == "After"

    r = api.patch(f"/orgs/{slug}", member, json={"name": "Mine"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = api.patch(f"/orgs/{slug}", admin, json={"name": ""})
    assert r.status_code == 422 and r.json()["field"] == "name"
    assert api.get(f"/orgs/{slug}", member).json()["name"] == "After"


# --------------------------------------------------------------------------- delete


def test_delete_needs_the_owner_and_the_exact_name(api: ApiClient) -> None:
    owner, admin, member = api.signup("owner"), api.signup("admin"), api.signup("member")
    slug = api.create_org(owner, "Doomed Org")
    api.add_member(slug, owner, admin, role="admin")
    api.add_member(slug, owner, member)
    org_id = _org_id(api, slug)
    insert_machine(api.db, slug, member.id)
    insert_machine(api.db, slug, owner.id)
    assert api.post(f"/orgs/{slug}/invitations", owner, json={}).status_code == 201
    keep = api.create_org(member, "Survivor")
    insert_machine(api.db, keep, member.id)

    r = api.request("DELETE", f"/orgs/{slug}", admin, json={"confirm": "Doomed Org"})
    assert r.status_code == 403
    for wrong in ("doomed org", "Doomed", " Doomed Org"):
        r = api.request("DELETE", f"/orgs/{slug}", owner, json={"confirm": wrong})
        assert r.status_code == 422 and r.json()["field"] == "confirm"
    assert api.request("DELETE", f"/orgs/{slug}", owner).status_code == 422  # no body

    r = api.request("DELETE", f"/orgs/{slug}", owner, json={"confirm": "Doomed Org"})
    assert r.status_code == 204
    assert api.get(f"/orgs/{slug}", owner).status_code == 404
    assert slug not in {o["slug"] for o in api.get("/orgs", member).json()["items"]}
    with api.db.session() as s:
        owned = (Membership.org_id, Invitation.org_id, Machine.org_id, SettingsVersion.org_id)
        for column in owned:
            left = s.scalar(select(func.count()).where(column == org_id))
            assert left == 0, column
        assert s.get(Organization, org_id) is None
        # The record of the deletion outlives the organization.
        event = s.scalars(
            select(AuditEvent).where(AuditEvent.org_id == org_id).order_by(AuditEvent.id.desc())
        ).first()
        assert event is not None and event.action == "org.deleted"
    assert len(_machines(api, _org_id(api, keep))) == 1
    # The slug is free again.
    assert api.post("/orgs", member, json={"name": "Reborn", "slug": slug}).status_code == 201


# ----------------------------------------------------------------------------- leave


def test_last_owner_cannot_leave(api: ApiClient) -> None:
    owner = api.signup("owner")
    slug = api.create_org(owner)
    r = api.post(f"/orgs/{slug}/leave", owner)
    assert r.status_code == 409 and r.json()["error"] == "last_owner"
    assert _roles(api, slug, owner) == {"owner": "owner"}


def test_member_leaving_takes_their_machines(api: ApiClient) -> None:
    owner, member = api.signup("owner"), api.signup("member")
    slug = api.create_org(owner)
    api.add_member(slug, owner, member)
    org_id = _org_id(api, slug)
    theirs = {insert_machine(api.db, slug, member.id) for _ in range(2)}
    mine = insert_machine(api.db, slug, owner.id)
    assert _machines(api, org_id) == theirs | {mine}

    assert api.post(f"/orgs/{slug}/leave", member).status_code == 204
    assert _machines(api, org_id) == {mine}
    assert _roles(api, slug, owner) == {"owner": "owner"}
    assert api.get(f"/orgs/{slug}", member).status_code == 404
    event = _last_action(api, org_id)
    assert event.action == "member.left" and event.target_id == member.id
    assert api.post(f"/orgs/{slug}/leave", member).status_code == 404


# -------------------------------------------------------------------------- transfer


def test_transfer_ownership(api: ApiClient) -> None:
    owner, admin, member, outsider = (api.signup(n) for n in ("owner", "admin", "member", "out"))
    slug = api.create_org(owner)
    api.add_member(slug, owner, admin, role="admin")
    api.add_member(slug, owner, member)

    r = api.post(f"/orgs/{slug}/transfer-ownership", admin, json={"user_id": member.id})
    assert r.status_code == 403
    r = api.post(f"/orgs/{slug}/transfer-ownership", owner, json={"user_id": outsider.id})
    assert r.status_code == 404 and r.json()["error"] == "member_not_found"
    r = api.post(f"/orgs/{slug}/transfer-ownership", owner, json={"user_id": owner.id})
    assert r.status_code == 422 and r.json()["field"] == "user_id"

    r = api.post(f"/orgs/{slug}/transfer-ownership", owner, json={"user_id": member.id})
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "admin"  # the caller's new role
    assert _roles(api, slug, owner) == {"owner": "admin", "admin": "admin", "member": "owner"}
    event = _last_action(api, _org_id(api, slug))
    assert event.action == "org.ownership_transferred" and event.target_id == member.id
    # The old owner may now leave; the new one may not.
    assert api.post(f"/orgs/{slug}/leave", member).status_code == 409
    assert api.post(f"/orgs/{slug}/leave", owner).status_code == 204


# ----------------------------------------------------------------------------- roles


def test_role_changes(api: ApiClient) -> None:
    owner, admin, admin2, member = (api.signup(n) for n in ("owner", "admin", "admin2", "member"))
    slug = api.create_org(owner)
    api.add_member(slug, owner, admin, role="admin")
    api.add_member(slug, owner, admin2, role="admin")
    api.add_member(slug, owner, member)

    def set_role(who: Person, target: Person, role: str) -> int:
        r = api.patch(f"/orgs/{slug}/members/{target.id}", who, json={"role": role})
        return r.status_code

    # Admins never touch the owner, never grant or take away admin, never their own role.
    assert set_role(admin, owner, "member") == 403
    assert set_role(admin, member, "admin") == 403
    assert set_role(admin, admin2, "member") == 403
    assert set_role(admin, admin, "member") == 403
    assert set_role(member, member, "admin") == 403
    # Ownership moves only through transfer.
    assert set_role(owner, member, "owner") == 422
    assert set_role(owner, owner, "admin") == 403
    assert set_role(owner, member, "wizard") == 422
    assert set_role(owner, member, "member") == 200  # no-op, no audit row
    assert _roles(api, slug, owner) == {
        "owner": "owner",
        "admin": "admin",
        "admin2": "admin",
        "member": "member",
    }

    assert set_role(owner, member, "admin") == 200
    assert set_role(owner, admin2, "member") == 200
    assert _roles(api, slug, owner) == {
        "owner": "owner",
        "admin": "admin",
        "admin2": "member",
        "member": "admin",
    }
    event = _last_action(api, _org_id(api, slug))
    assert event.action == "member.role_changed" and event.target_id == admin2.id
    assert event.before == {"role": "admin"} and event.after == {"role": "member"}
    r = api.patch(f"/orgs/{slug}/members/{uuid.uuid4()}", owner, json={"role": "member"})
    assert r.status_code == 404 and r.json()["error"] == "member_not_found"


def test_remove_member(api: ApiClient) -> None:
    owner, admin, admin2, member = (api.signup(n) for n in ("owner", "admin", "admin2", "member"))
    slug = api.create_org(owner)
    api.add_member(slug, owner, admin, role="admin")
    api.add_member(slug, owner, admin2, role="admin")
    api.add_member(slug, owner, member)
    org_id = _org_id(api, slug)
    insert_machine(api.db, slug, member.id)
    kept = insert_machine(api.db, slug, admin.id)

    def remove(who: Person, target: Person | str) -> int:
        target_id = target.id if isinstance(target, Person) else target
        return api.delete(f"/orgs/{slug}/members/{target_id}", who).status_code

    assert remove(member, admin) == 403
    assert remove(admin, owner) == 403
    assert remove(admin, admin2) == 403
    assert remove(admin, admin) == 422  # use leave
    assert remove(owner, owner) == 422
    assert remove(admin, str(uuid.uuid4())) == 404

    assert remove(admin, member) == 204
    assert _machines(api, org_id) == {kept}
    event = _last_action(api, org_id)
    assert event.action == "member.removed" and event.target_id == member.id
    assert event.before == {"user_id": member.id, "role": "member"}
    assert remove(owner, admin2) == 204
    assert _roles(api, slug, owner) == {"owner": "owner", "admin": "admin"}
    assert api.get(f"/orgs/{slug}", member).status_code == 404
