"""Removing a member or deleting an org is one transaction: a failure half-way changes nothing.

Two ways to fail mid-cascade: a hook that raises after it changed rows (the request's
transaction rolls back), and a process killed with `os._exit` between steps (the
database never sees a commit). Both on a SQLite file and on PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from orgs import cascade
from orgs.models import AuditEvent, Invitation, Machine, Membership, Organization
from policies.errors import Conflict
from tests.support import ApiClient, Person, insert_machine

REPO_ROOT = Path(__file__).resolve().parents[2]


def _snapshot(api: ApiClient, slug: str) -> dict[str, Any]:
    """Everything the cascade may touch, for before/after comparison."""
    with api.db.session() as s:
        org = s.scalars(select(Organization).where(Organization.slug == slug)).one()
        return {
            "org": (org.id, org.name, org.settings_version),
            "members": sorted(
                (str(m.user_id), m.role)
                for m in s.scalars(select(Membership).where(Membership.org_id == org.id))
            ),
            "machines": sorted(
                str(i) for i in s.scalars(select(Machine.id).where(Machine.org_id == org.id))
            ),
            "invitations": sorted(
                str(i) for i in s.scalars(select(Invitation.id).where(Invitation.org_id == org.id))
            ),
            "audit": list(s.scalars(select(AuditEvent.id).where(AuditEvent.org_id == org.id))),
        }


def _world(api: ApiClient) -> tuple[str, Person, Person]:
    owner, member = api.signup("owner"), api.signup("member")
    slug = api.create_org(owner, "Cascade Org")
    api.add_member(slug, owner, member)
    insert_machine(api.db, slug, member.id)
    insert_machine(api.db, slug, member.id)
    insert_machine(api.db, slug, owner.id)
    assert api.post(f"/orgs/{slug}/invitations", owner, json={}).status_code == 201
    return slug, owner, member


def _vandalize(session: Session, org: Organization) -> None:
    """What a buggy hook might do before failing: change rows all over the org."""
    session.execute(delete(Machine).where(Machine.org_id == org.id))
    session.execute(update(Membership).where(Membership.org_id == org.id).values(role="admin"))
    session.add(AuditEvent(org_id=org.id, action="half.done"))
    session.flush()


@pytest.fixture
def failing_hooks() -> Iterator[Callable[[BaseException], None]]:
    """Install hooks that vandalize and then raise `exc`; always uninstalled afterwards."""
    installed: list[tuple[list[Any], Any]] = []

    def install(exc: BaseException) -> None:
        def member_hook(session: Session, org: Organization, user_id: uuid.UUID) -> None:
            _vandalize(session, org)
            raise exc

        def org_hook(session: Session, org: Organization) -> None:
            _vandalize(session, org)
            raise exc

        cascade.on_member_removed(member_hook)
        cascade.on_org_deleted(org_hook)
        installed.extend([(cascade._member_hooks, member_hook), (cascade._org_hooks, org_hook)])

    yield install
    for hooks, hook in installed:
        hooks.remove(hook)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        pytest.param(RuntimeError("hook bug"), 500, id="unexpected-error"),
        pytest.param(
            Conflict("The member has jobs that cannot stop.", code="busy"), 409, id="refusal"
        ),
    ],
)
@pytest.mark.parametrize("action", ["remove", "leave", "delete"])
def test_failing_hook_leaves_nothing_half_done(
    api: ApiClient,
    failing_hooks: Callable[[BaseException], None],
    action: str,
    exc: BaseException,
    status: int,
) -> None:
    slug, owner, member = _world(api)
    before = _snapshot(api, slug)
    failing_hooks(exc)
    if action == "remove":
        r = api.delete(f"/orgs/{slug}/members/{member.id}", owner)
    elif action == "leave":
        r = api.post(f"/orgs/{slug}/leave", member)
    else:
        r = api.request("DELETE", f"/orgs/{slug}", owner, json={"confirm": "Cascade Org"})
    assert r.status_code == status, r.text
    assert set(r.json()) >= {"error", "detail"}
    assert _snapshot(api, slug) == before


def test_cascade_without_failing_hooks_completes(api: ApiClient) -> None:
    """Control for the tests above: without a failing hook the same call succeeds."""
    slug, owner, member = _world(api)
    before = _snapshot(api, slug)
    assert api.delete(f"/orgs/{slug}/members/{member.id}", owner).status_code == 204
    after = _snapshot(api, slug)
    assert len(after["machines"]) == 1 and len(after["members"]) == 1
    assert len(after["audit"]) == len(before["audit"]) + 1


# A separate process that starts the cascade and dies inside it, without cleanup:
# like a crash or `kill -9` of the API process between two steps.
_KILL_SCRIPT = """
import os, sys, uuid
from sqlalchemy import delete, select
from orgs import cascade, organizations
from orgs.context import member_context
from orgs.db import Database
from orgs.models import AuditEvent, Machine, User

url, slug, actor_id, target_id, action = sys.argv[1:]
db = Database(url)

def die(session, org, *_):
    session.execute(delete(Machine).where(Machine.org_id == org.id))
    session.add(AuditEvent(org_id=org.id, action="half.done"))
    session.flush()
    os._exit(3)

cascade.on_member_removed(die)
cascade.on_org_deleted(die)
with db.session() as s:
    ctx = member_context(s, slug, s.get(User, uuid.UUID(actor_id)))
    if action == "remove":
        organizations.remove_member(ctx, s, user_id=uuid.UUID(target_id))
    else:
        organizations.delete(ctx, s, confirm=ctx.org.name)
sys.exit(0)
"""


@pytest.mark.parametrize("action", ["remove", "delete"])
def test_killed_mid_cascade_changes_nothing(api: ApiClient, action: str) -> None:
    slug, owner, member = _world(api)
    before = _snapshot(api, slug)
    url = api.db.engine.url.render_as_string(hide_password=False)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, url, slug, owner.id, member.id, action],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert _snapshot(api, slug) == before
    # The database is healthy afterwards: the same cascade now completes.
    if action == "remove":
        assert api.delete(f"/orgs/{slug}/members/{member.id}", owner).status_code == 204
        assert len(_snapshot(api, slug)["machines"]) == 1
    else:
        r = api.request("DELETE", f"/orgs/{slug}", owner, json={"confirm": "Cascade Org"})
        assert r.status_code == 204
        assert api.get(f"/orgs/{slug}", owner).status_code == 404
