"""The audit log route: admins only, filters, keyset pagination newest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from orgs.models import AuditEvent, Organization
from tests.support import ApiClient, Person


def _busy_org(api: ApiClient) -> tuple[str, Person, Person, Person]:
    owner, admin, member = api.signup("owner"), api.signup("admin"), api.signup("member")
    slug = api.create_org(owner, "Busy")
    api.add_member(slug, owner, admin, role="admin")
    api.add_member(slug, owner, member)
    r = api.patch(f"/orgs/{slug}/members/{member.id}", owner, json={"role": "admin"})
    assert r.status_code == 200
    r = api.put(f"/orgs/{slug}/settings", admin, json={"description": "busy busy"})
    assert r.status_code == 200
    return slug, owner, admin, member


def _all(api: ApiClient, slug: str, who: Person, **params: object) -> list[dict[str, Any]]:
    r = api.get(f"/orgs/{slug}/audit", who, params=params)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def test_items_newest_first_with_before_and_after(api: ApiClient) -> None:
    slug, owner, _, member = _busy_org(api)
    items = _all(api, slug, owner)
    assert [e["action"] for e in items] == [
        "org.updated",
        "member.role_changed",
        "member.joined",
        "invitation.created",
        "member.joined",
        "invitation.created",
        "org.created",
    ]
    ids = [e["id"] for e in items]
    assert ids == sorted(ids, reverse=True)
    role_change = items[1]
    assert set(role_change) == {
        "id",
        "at",
        "actor",
        "action",
        "target_type",
        "target_id",
        "before",
        "after",
    }
    assert role_change["actor"] == "owner" and role_change["target_type"] == "user"
    assert role_change["target_id"] == member.id
    assert role_change["before"] == {"role": "member"} and role_change["after"] == {"role": "admin"}
    assert datetime.fromisoformat(role_change["at"]).tzinfo is not None
    # No secret ever lands in the log: invitations are recorded by prefix only.
    created = items[3]
    assert created["after"]["prefix"].startswith("cs_i_") and len(created["after"]["prefix"]) == 12


def test_keyset_pagination_walks_everything_once(api: ApiClient) -> None:
    slug, owner, _, _ = _busy_org(api)
    everything = [e["id"] for e in _all(api, slug, owner)]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, object] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        body = api.get(f"/orgs/{slug}/audit", owner, params=params).json()
        seen += [e["id"] for e in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert cursor == seen[-1]
    assert seen == everything and pages == 4
    # New events do not shift the pages of a walk already under way.
    first = api.get(f"/orgs/{slug}/audit", owner, params={"limit": 3}).json()
    api.patch(f"/orgs/{slug}", owner, json={"description": "more"})
    second = api.get(
        f"/orgs/{slug}/audit", owner, params={"limit": 3, "cursor": first["next_cursor"]}
    ).json()
    assert [e["id"] for e in first["items"] + second["items"]] == everything[:6]


def test_filters(api: ApiClient) -> None:
    slug, owner, _, member = _busy_org(api)
    assert [e["action"] for e in _all(api, slug, owner, action="member.joined")] == [
        "member.joined"
    ] * 2
    assert {e["action"] for e in _all(api, slug, owner, action="member.*")} == {
        "member.joined",
        "member.role_changed",
    }
    assert _all(api, slug, owner, action="member") == []  # exact unless ".*"
    assert _all(api, slug, owner, action="%.*") == []  # LIKE wildcards are literal
    assert {e["action"] for e in _all(api, slug, owner, actor="admin")} == {
        "member.joined",
        "org.updated",
    }
    assert _all(api, slug, owner, actor="nobody") == []
    targeted = _all(api, slug, owner, target_id=member.id)
    assert [e["action"] for e in targeted] == ["member.role_changed", "member.joined"]

    # since/until: push the first three events into the past.
    with api.db.transaction() as s:
        org_id = s.scalars(select(Organization.id).where(Organization.slug == slug)).one()
        old_ids = list(
            s.scalars(
                select(AuditEvent.id)
                .where(AuditEvent.org_id == org_id)
                .order_by(AuditEvent.id)
                .limit(3)
            )
        )
        s.execute(
            update(AuditEvent)
            .where(AuditEvent.id.in_(old_ids))
            .values(created_at=datetime.now(UTC) - timedelta(days=10))
        )
    cut = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert sorted(e["id"] for e in _all(api, slug, owner, until=cut)) == old_ids
    recent = _all(api, slug, owner, since=cut)
    assert len(recent) == 4 and not set(old_ids) & {e["id"] for e in recent}
    naive = (datetime.now(UTC) - timedelta(days=1)).replace(tzinfo=None).isoformat()
    assert len(_all(api, slug, owner, since=naive)) == 4  # read as UTC
    assert _all(api, slug, owner, since=cut, action="org.created") == []


def test_admins_only_and_bad_parameters(api: ApiClient) -> None:
    slug, owner, admin, _ = _busy_org(api)
    member = api.signup("plain")
    api.add_member(slug, owner, member)
    r = api.get(f"/orgs/{slug}/audit", member)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert api.get(f"/orgs/{slug}/audit", admin).status_code == 200
    for params, field in (
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"cursor": 0}, "cursor"),
        ({"cursor": 2**63}, "cursor"),
        ({"cursor": "abc"}, "cursor"),
        ({"since": "yesterday"}, "since"),
        ({"action": "x" * 65}, "action"),
    ):
        r = api.get(f"/orgs/{slug}/audit", owner, params=params)
        assert r.status_code == 422 and r.json()["field"] == field, (params, r.text)
