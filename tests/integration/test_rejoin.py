"""Requests to rejoin, on both databases: a former member asks, an admin approves (with
a role) or denies, the requester gets an e-mail (a real SMTP server), everything is
audited; "do not allow rejoin" refuses; the public route answers an unknown slug and an
organization the caller was never in exactly alike (no probing), and stores nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select
from typer.testing import CliRunner

from api.cli.main import app as cli_app
from orgs.db import Database, UTCDateTime
from orgs.migrate import upgrade
from orgs.models import AuditEvent, FormerMember, JoinRequest
from orgs.notifications import NotificationOutbox
from tests.smtp_server import SmtpServer
from tests.support import ApiClient, Person, serve_in_thread


@pytest.fixture
def mail_api(smtp_env: SmtpServer, database: Database) -> Iterator[ApiClient]:
    """The app on each backend with its e-mail going to the test's SMTP server."""
    with ApiClient.start(database) as client:
        yield client


def _world(api: ApiClient) -> tuple[Person, Person, str]:
    owner, ada = api.signup(), api.signup()
    slug = api.create_org(owner)
    api.add_member(slug, owner, ada)
    return owner, ada, slug


def _ask(api: ApiClient, who: Person, slug: str, note: str | None = None) -> Any:
    return api.post(f"/orgs/{slug}/join-requests", who, json={"note": note})


def _pending(api: ApiClient, admin: Person, slug: str) -> list[dict[str, Any]]:
    r = api.get(f"/orgs/{slug}/join-requests", admin)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def _actions(db: Database, slug_org_id: Any = None) -> list[str]:
    with db.session(write=False) as s:
        stmt = select(AuditEvent.action).order_by(AuditEvent.id)
        return list(s.scalars(stmt))


def test_left_member_asks_admin_approves_user_is_mailed(
    mail_api: ApiClient, smtp_env: SmtpServer
) -> None:
    api = mail_api
    owner, ada, slug = _world(api)
    assert (
        api.patch(f"/orgs/{slug}", owner, json={"contact_email": "Admins@Example.org"}).json()[
            "contact_email"
        ]
        == "admins@example.org"
    )
    assert api.post(f"/orgs/{slug}/leave", ada).status_code == 204
    assert api.get(f"/orgs/{slug}", ada).status_code == 404

    r = _ask(api, ada, slug, "Back from parental leave")
    assert r.status_code == 202, r.text
    # Asking twice keeps one pending request (the newer note replaces the older).
    assert _ask(api, ada, slug, "Back from leave, team B").status_code == 202
    [req] = _pending(api, owner, slug)
    assert req["user"]["name"] == ada.name and req["note"] == "Back from leave, team B"
    assert req["status"] == "pending"
    # Members cannot see requests (403), outsiders do not see the org (404).
    bob = api.signup()
    api.add_member(slug, owner, bob)
    assert api.get(f"/orgs/{slug}/join-requests", bob).status_code == 403
    assert api.post(f"/orgs/{slug}/join-requests/{req['id']}/approve", bob).status_code == 403
    assert api.get(f"/orgs/{slug}/join-requests", api.signup()).status_code == 404

    r = api.post(f"/orgs/{slug}/join-requests/{req['id']}/approve", owner, json={"role": "admin"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved" and r.json()["role"] == "admin"
    shown = api.get(f"/orgs/{slug}", ada)
    assert shown.status_code == 200 and shown.json()["role"] == "admin"
    # Deciding twice is a conflict, not a second membership.
    again = api.post(f"/orgs/{slug}/join-requests/{req['id']}/deny", owner)
    assert again.status_code == 409 and again.json()["error"] == "join_request_decided"
    # A current member asking is told so.
    member_asks = _ask(api, ada, slug)
    assert member_asks.status_code == 409 and member_asks.json()["error"] == "already_member"

    mails = [m for m in smtp_env.wait_for(1) if ada.email in m.rcpt_tos]
    [mail] = mails
    assert "approved" in mail.subject and "admin" in mail.subject
    assert f"/orgs/{slug}" in mail.text and "admins@example.org" in mail.text

    actions = _actions(api.db)
    for action in ("member.left", "join_request.created", "join_request.approved"):
        assert action in actions, actions
    assert actions.count("member.joined") == 3  # ada's invitation, bob's, the approval
    mine = api.get("/me/join-requests", ada).json()["items"]
    assert [(m["org"], m["status"], m["role"]) for m in mine] == [(slug, "approved", "admin")]
    with api.db.session(write=False) as s:  # rejoined: no longer a former member
        assert s.scalar(select(func.count()).select_from(FormerMember)) == 0


def test_removed_member_is_denied_then_waits(mail_api: ApiClient, smtp_env: SmtpServer) -> None:
    api = mail_api
    owner, ada, slug = _world(api)
    admin = api.signup()
    api.add_member(slug, owner, admin, role="admin")
    assert api.delete(f"/orgs/{slug}/members/{ada.id}", owner).status_code == 204
    assert _ask(api, ada, slug, "please").status_code == 202
    [req] = _pending(api, admin, slug)
    # Only the owner may let someone back in as admin.
    r = api.post(f"/orgs/{slug}/join-requests/{req['id']}/approve", admin, json={"role": "admin"})
    assert r.status_code == 403
    owner_role = api.post(
        f"/orgs/{slug}/join-requests/{req['id']}/approve", owner, json={"role": "owner"}
    )
    assert owner_role.status_code == 422

    r = api.post(
        f"/orgs/{slug}/join-requests/{req['id']}/deny", admin, json={"reason": "Project ended."}
    )
    assert r.status_code == 200 and r.json()["status"] == "denied"
    assert api.get(f"/orgs/{slug}", ada).status_code == 404
    assert _pending(api, admin, slug) == []
    denied = api.get(f"/orgs/{slug}/join-requests?status=denied", admin).json()["items"]
    assert [d["reason"] for d in denied] == ["Project ended."]

    [mail] = [m for m in smtp_env.wait_for(1) if ada.email in m.rcpt_tos]
    assert "denied" in mail.subject and "Project ended." in mail.text
    # Asking again right away: told when they may.
    soon = _ask(api, ada, slug)
    assert soon.status_code == 429 and soon.json()["error"] == "recently_denied"
    assert int(soon.headers["Retry-After"]) > 3600
    mine = api.get("/me/join-requests", ada).json()["items"]
    assert mine[0]["status"] == "denied" and mine[0]["reason"] == "Project ended."
    actions = _actions(api.db)
    assert "member.removed" in actions and "join_request.denied" in actions


def test_removed_with_no_rejoin_cannot_ask(api: ApiClient) -> None:
    owner, ada, slug = _world(api)
    r = api.delete(f"/orgs/{slug}/members/{ada.id}?no_rejoin=true", owner)
    assert r.status_code == 204
    refused = _ask(api, ada, slug, "let me in")
    assert refused.status_code == 403 and refused.json()["error"] == "rejoin_blocked"
    with api.db.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(JoinRequest)) == 0
        blocked = s.scalars(select(AuditEvent).where(AuditEvent.action == "member.rejoin_blocked"))
        assert [str(e.target_id) for e in blocked] == [ada.id]
    # An admin may still invite them back on purpose.
    api.add_member(slug, owner, ada)
    assert api.get(f"/orgs/{slug}", ada).status_code == 200


def test_join_requests_cannot_probe_for_organizations(api: ApiClient) -> None:
    owner, _ada, slug = _world(api)
    stranger = api.signup()
    before = _actions(api.db)

    def answer(target: str) -> tuple[int, dict[str, Any]]:
        r = _ask(api, stranger, target, "hello")
        body = r.json()
        body.pop("request_id", None)
        return r.status_code, body

    existing = answer(slug)
    unknown = answer("no-such-org-anywhere")
    assert existing == unknown
    assert existing[0] == 202 and existing[1]["status"] == "received"
    # Nothing stored, nothing audited, nothing shown to the admins.
    with api.db.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(JoinRequest)) == 0
    assert _actions(api.db) == before
    assert _pending(api, owner, slug) == []
    assert api.get("/me/join-requests", stranger).json()["items"] == []
    # Signed out: 401, as everywhere.
    assert api.post(f"/orgs/{slug}/join-requests", json={}).status_code == 401
    # A bad note is named.
    bad = _ask(api, stranger, slug, "x" * 1001)
    assert bad.status_code == 422 and bad.json()["field"] == "note"


def test_cli_request_join_list_approve(api: ApiClient, tmp_path: Any) -> None:
    owner, ada, slug = _world(api)
    assert api.post(f"/orgs/{slug}/leave", ada).status_code == 204
    with serve_in_thread(api.client.app) as url:  # type: ignore[arg-type]
        base = url.removesuffix("/api/v1")

        def env(who: Person) -> dict[str, str]:
            return {
                "CSHARE_API_URL": base,
                "CSHARE_TOKEN": who.token,
                "CSHARE_ORG": slug,
                "CSHARE_CONFIG": str(tmp_path / f"{who.name}.toml"),
                "COLUMNS": "200",
            }

        runner = CliRunner()
        r = runner.invoke(cli_app, ["org", "request-join", slug, "--note", "hi"], env=env(ada))
        assert r.exit_code == 0 and "Request received" in r.stdout, r.output
        r = runner.invoke(cli_app, ["org", "join-requests", "--json"], env=env(owner))
        assert r.exit_code == 0, r.output
        [req] = json.loads(r.stdout)["items"]
        r = runner.invoke(cli_app, ["org", "join-requests"], env=env(owner))
        assert r.exit_code == 0 and ada.name in r.stdout and "hi" in r.stdout, r.output
        r = runner.invoke(
            cli_app,
            ["org", "join-requests", "approve", req["id"], "--role", "member"],
            env=env(owner),
        )
        assert r.exit_code == 0 and "Approved" in r.stdout, r.output
        r = runner.invoke(cli_app, ["org", "my-join-requests"], env=env(ada))
        assert r.exit_code == 0 and "approved" in r.stdout, r.output
        # Removing with --no-rejoin, then asking: the 403 is shown.
        r = runner.invoke(
            cli_app, ["member", "remove", ada.name, "--no-rejoin", "--yes"], env=env(owner)
        )
        assert r.exit_code == 0 and "may not request to rejoin" in r.stdout, r.output
        r = runner.invoke(cli_app, ["org", "request-join", slug], env=env(ada))
        assert r.exit_code != 0 and "does not allow requests to rejoin" in r.output, r.output


def test_migration_remembers_who_left_before_it(tmp_path: Any) -> None:
    """0028 fills `former_members` from the audit log: people who left or were removed
    earlier can ask too (not those who came back)."""
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        upgrade(db.engine, "0020")
        org_id, left, removed, back = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        now = datetime.now(UTC)
        users = sa.table(
            "users",
            sa.column("id", sa.Uuid()),
            sa.column("email", sa.String()),
            sa.column("name", sa.String()),
            sa.column("password_hash", sa.String()),
            sa.column("created_at", UTCDateTime()),
        )
        orgs_t = sa.table(
            "organizations",
            sa.column("id", sa.Uuid()),
            sa.column("slug", sa.String()),
            sa.column("name", sa.String()),
            sa.column("description", sa.String()),
            sa.column("created_at", UTCDateTime()),
            sa.column("settings", sa.JSON()),
            sa.column("settings_version", sa.Integer()),
        )
        members = sa.table(
            "memberships",
            sa.column("id", sa.Uuid()),
            sa.column("org_id", sa.Uuid()),
            sa.column("user_id", sa.Uuid()),
            sa.column("role", sa.String()),
            sa.column("created_at", UTCDateTime()),
        )
        audit_t = sa.table(
            "audit_events",
            sa.column("org_id", sa.Uuid()),
            sa.column("actor_name", sa.String()),
            sa.column("action", sa.String()),
            sa.column("target_type", sa.String()),
            sa.column("target_id", sa.String()),
            sa.column("before", sa.JSON()),
            sa.column("created_at", UTCDateTime()),
        )
        with db.engine.begin() as conn:
            for uid in (left, removed, back):
                conn.execute(
                    users.insert().values(
                        id=uid,
                        email=f"{uid}@x.test",
                        name=uid.hex[:12],
                        password_hash="x",
                        created_at=now,
                    )
                )
            conn.execute(
                orgs_t.insert().values(
                    id=org_id,
                    slug="old-org",
                    name="Old",
                    description="",
                    created_at=now,
                    settings={},
                    settings_version=1,
                )
            )
            conn.execute(
                members.insert().values(
                    id=uuid.uuid4(), org_id=org_id, user_id=back, role="member", created_at=now
                )
            )
            for uid, action in (
                (left, "member.left"),
                (removed, "member.removed"),
                (back, "member.left"),
            ):
                conn.execute(
                    audit_t.insert().values(
                        org_id=org_id,
                        actor_name="x",
                        action=action,
                        target_type="user",
                        target_id=str(uid),
                        before={"role": "admin"},
                        created_at=now,
                    )
                )
        upgrade(db.engine)
        with db.session(write=False) as s:
            rows = {(r.user_id, r.how, r.role) for r in s.scalars(select(FormerMember))}
        assert rows == {(left, "left", "admin"), (removed, "removed", "admin")}
    finally:
        db.dispose()


def test_new_request_is_announced_to_the_org_channels(api: ApiClient) -> None:
    """`join_request.created` is in the default events of a notification target."""
    owner, ada, slug = _world(api)
    api.set_settings(notifications_allow_loopback=True)
    target = {"kind": "webhook", "url": "http://127.0.0.1:9/hook", "secret": "s" * 16}
    r = api.put(f"/orgs/{slug}/notifications", owner, json={"targets": [target]})
    assert r.status_code == 200, r.text
    assert "join_request.created" in r.json()["events"]
    assert api.post(f"/orgs/{slug}/leave", ada).status_code == 204
    assert _ask(api, ada, slug, "hi").status_code == 202
    with api.db.session(write=False) as s:
        rows = list(
            s.scalars(
                select(NotificationOutbox).where(NotificationOutbox.event == "join_request.created")
            )
        )
    assert len(rows) == 1 and rows[0].target_id is not None
    assert rows[0].payload["name"] == ada.name and rows[0].payload["note"] == "hi"
