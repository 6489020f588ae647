"""Removing a member or deleting an organization, as ONE transaction.

Later features plug in through hooks (terminate the member's jobs, drop their
schedules, datasets...), registered at start-up in one list (flows.wiring), never by
importing a module. A hook only changes rows in the given session; anything that
must reach another system (cancel a Prefect run) is recorded here and carried out by a
resumable reconciler, so a crash can never leave a half-removed member.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from orgs import audit
from orgs.models import Invitation, Machine, Membership, Organization, User

MemberRemovedHook = Callable[[Session, Organization, uuid.UUID], None]
OrgDeletedHook = Callable[[Session, Organization], None]

_member_hooks: list[MemberRemovedHook] = []
_org_hooks: list[OrgDeletedHook] = []


def on_member_removed(hook: MemberRemovedHook) -> MemberRemovedHook:
    """Register `hook(session, org, user_id)`, run before the membership row goes
    (hooks run in registration order; registering twice is a no-op)."""
    if hook not in _member_hooks:
        _member_hooks.append(hook)
    return hook


def on_org_deleted(hook: OrgDeletedHook) -> OrgDeletedHook:
    """Register `hook(session, org)`, run before the organization row goes."""
    if hook not in _org_hooks:
        _org_hooks.append(hook)
    return hook


def _drop_member_machines(session: Session, org: Organization, user_id: uuid.UUID) -> None:
    # Deleting the row also kills the machine token (only its hash was stored there).
    session.execute(delete(Machine).where(Machine.org_id == org.id, Machine.owner_id == user_id))


def remove_member(
    session: Session,
    org: Organization,
    membership: Membership,
    *,
    actor: User,
    action: str,
) -> None:
    """Remove `membership` and everything that hangs off it; commits once."""
    user_id = membership.user_id
    before = {"user_id": str(user_id), "role": membership.role}
    for hook in _member_hooks:
        hook(session, org, user_id)
    _drop_member_machines(session, org, user_id)
    session.delete(membership)
    audit.record(
        session,
        org_id=org.id,
        actor=actor,
        action=action,
        target_type="user",
        target_id=user_id,
        before=before,
    )
    session.commit()


def delete_org(session: Session, org: Organization, *, actor: User) -> None:
    """Delete the organization and all it owns; commits once."""
    for hook in _org_hooks:
        hook(session, org)
    members = session.scalars(select(Membership.user_id).where(Membership.org_id == org.id)).all()
    session.execute(delete(Machine).where(Machine.org_id == org.id))
    session.execute(delete(Invitation).where(Invitation.org_id == org.id))
    session.execute(delete(Membership).where(Membership.org_id == org.id))
    audit.record(
        session,
        org_id=org.id,
        actor=actor,
        action="org.deleted",
        target_type="organization",
        target_id=org.id,
        before={"slug": org.slug, "name": org.name, "members": len(members)},
    )
    session.delete(org)
    session.commit()
