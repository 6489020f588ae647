"""Invitations: create (code shown once, stored hashed), list, revoke, accept.

Accepting consumes one use with a single conditional UPDATE in the same transaction as
the membership insert, so `max_uses` holds exactly under concurrent accepts on both
backends: PostgreSQL re-checks the UPDATE's WHERE against the row the winner committed,
and SQLite write transactions (BEGIN IMMEDIATE) run one at a time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from typing import Any, Final, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orgs import audit, security, settings_doc
from orgs.context import OrgContext
from orgs.db import utcnow
from orgs.models import Invitation, Membership, Organization, User
from policies.errors import Conflict, Forbidden, Invalid, NotFound
from policies.permissions import Permission, Role, denial, may_assign

# Without the org's setting: an invitation lives 7 days (invitations.default_expiry_hours)
# and serves one person (invitations.default_max_uses) unless its creator says otherwise.
DEFAULT_EXPIRY_HOURS = 168
DEFAULT_MAX_USES = 1
MIN_EXPIRY_HOURS = 1
MAX_EXPIRY_HOURS = 24 * 365
MAX_USES = 10_000


class OrgDefault(Enum):
    """`max_uses` not given: the organization's `invitations.default_max_uses` applies."""

    token = 0


ORG_DEFAULT: Final = OrgDefault.token


class InvitationState(StrEnum):
    active = "active"
    expired = "expired"
    revoked = "revoked"
    used_up = "used_up"


@dataclass(frozen=True, slots=True)
class IssuedInvitation:
    code: str  # the secret, shown once
    record: Invitation


def state_of(inv: Invitation, now: datetime | None = None) -> InvitationState:
    """Revoked wins over used up, which wins over expired (the most deliberate reason)."""
    now = now or utcnow()
    if inv.revoked_at is not None:
        return InvitationState.revoked
    if inv.max_uses is not None and inv.uses >= inv.max_uses:
        return InvitationState.used_up
    if inv.expires_at <= now:
        return InvitationState.expired
    return InvitationState.active


_UNUSABLE: dict[InvitationState, tuple[str, str]] = {
    InvitationState.expired: ("invitation_expired", "This invitation has expired."),
    InvitationState.revoked: ("invitation_revoked", "This invitation was revoked."),
    InvitationState.used_up: ("invitation_used_up", "This invitation has no uses left."),
}


def _unusable(state: InvitationState) -> Conflict:
    code, detail = _UNUSABLE[state]
    return Conflict(f"{detail} Ask for a new one.", code=code)


def _not_found() -> NotFound:
    return NotFound("No such invitation.", code="invitation_not_found")


def _check_may_invite(ctx: OrgContext, role: Role) -> None:
    if role is Role.owner:
        raise Invalid(
            "Nobody can be invited as owner; ownership moves only through transfer.",
            field="role",
        )
    if ctx.can(Permission.invitations_manage):
        if not may_assign(ctx.role, None, role):
            raise Forbidden(denial(Permission.admins_manage), code="forbidden")
        return
    # Members reach here through invitations_create_if_allowed: the org decides.
    if settings_doc.load(ctx.org.settings).invitations.who_may_invite != "members":
        raise Forbidden(denial(Permission.invitations_manage), code="forbidden")
    if role is not Role.member:
        raise Forbidden("Members may only invite members.", code="forbidden")


def create(
    ctx: OrgContext,
    session: Session,
    *,
    role: Role = Role.member,
    expires_in_hours: int | None = None,
    max_uses: int | OrgDefault | None = ORG_DEFAULT,
) -> IssuedInvitation:
    """A new invitation; `max_uses=None` means unlimited uses until it expires, not
    given the org's default (one use unless its admins changed that)."""
    ctx.require(Permission.invitations_create_if_allowed)
    _check_may_invite(ctx, role)
    defaults = settings_doc.load(ctx.org.settings).invitations
    if expires_in_hours is None:
        expires_in_hours = defaults.default_expiry_hours
    if isinstance(max_uses, OrgDefault):
        max_uses = defaults.default_max_uses
    if not MIN_EXPIRY_HOURS <= expires_in_hours <= MAX_EXPIRY_HOURS:
        raise Invalid(
            f"expires_in_hours must be between {MIN_EXPIRY_HOURS} and {MAX_EXPIRY_HOURS}.",
            field="expires_in_hours",
        )
    if max_uses is not None and not 1 <= max_uses <= MAX_USES:
        raise Invalid(
            f"max_uses must be between 1 and {MAX_USES}, or null for unlimited.",
            field="max_uses",
        )
    code = security.new_token("invite")
    inv = Invitation(
        org_id=ctx.org.id,
        code_hash=security.hash_token(code),
        prefix=security.token_prefix(code),
        role=role.value,
        created_by=ctx.user.id,
        expires_at=utcnow() + timedelta(hours=expires_in_hours),
        max_uses=max_uses,
        uses=0,
    )
    session.add(inv)
    session.flush()
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="invitation.created",
        target_type="invitation",
        target_id=inv.id,
        after={
            "prefix": inv.prefix,
            "role": inv.role,
            "expires_at": inv.expires_at.isoformat(),
            "max_uses": inv.max_uses,
        },
    )
    session.commit()
    return IssuedInvitation(code, inv)


def list_for(
    ctx: OrgContext, session: Session, *, limit: int, offset: int
) -> tuple[list[Invitation], int]:
    """Admins see every invitation of the org; members only those they created."""
    ctx.require(Permission.invitations_create_if_allowed)
    where = [Invitation.org_id == ctx.org.id]
    if not ctx.can(Permission.invitations_manage):
        where.append(Invitation.created_by == ctx.user.id)
    rows = list(
        session.scalars(
            select(Invitation)
            .where(*where)
            .order_by(Invitation.created_at.desc(), Invitation.id)
            .limit(limit)
            .offset(offset)
        )
    )
    total = session.scalar(select(func.count()).select_from(Invitation).where(*where))
    return rows, int(total or 0)


def revoke(ctx: OrgContext, session: Session, invitation_id: uuid.UUID) -> None:
    """Revoke (idempotent; uses already made stay)."""
    ctx.require(Permission.invitations_manage)
    inv = session.get(Invitation, invitation_id)
    # Another org's invitation is "not found", never "forbidden".
    if inv is None or inv.org_id != ctx.org.id:
        raise _not_found()
    before = state_of(inv)
    if before is InvitationState.revoked:
        return
    inv.revoked_at = utcnow()
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="invitation.revoked",
        target_type="invitation",
        target_id=inv.id,
        before={"state": before.value},
        after={"state": InvitationState.revoked.value},
    )
    session.commit()


def _already_member() -> Conflict:
    return Conflict("You are already a member of this organization.", code="already_member")


def accept(session: Session, user: User, code: str) -> tuple[Organization, Membership]:
    """Join the invitation's organization with its role; consumes one use."""
    inv = session.scalars(
        select(Invitation).where(Invitation.code_hash == security.hash_token(code))
    ).first()
    if inv is None:
        raise _not_found()
    org_id, invitation_id = inv.org_id, inv.id
    # Checked before consuming, so a member clicking an old link costs no use.
    already = session.scalar(
        select(Membership.id).where(Membership.org_id == org_id, Membership.user_id == user.id)
    )
    if already is not None:
        raise _already_member()
    now = utcnow()
    state = state_of(inv, now)
    if state is not InvitationState.active:
        raise _unusable(state)
    # The gate that holds under concurrency: every condition re-checked atomically.
    result = cast(
        CursorResult[Any],
        session.execute(
            update(Invitation)
            .where(
                Invitation.id == invitation_id,
                Invitation.revoked_at.is_(None),
                Invitation.expires_at > now,
                Invitation.max_uses.is_(None) | (Invitation.uses < Invitation.max_uses),
            )
            .values(uses=Invitation.uses + 1)
            .execution_options(synchronize_session=False)
        ),
    )
    if result.rowcount != 1:
        # Someone else won the last use, or it was revoked / the org deleted meanwhile.
        fresh = session.get(Invitation, invitation_id, populate_existing=True)
        session.rollback()
        if fresh is None:
            raise _not_found()
        state = state_of(fresh, now)
        raise _unusable(state if state is not InvitationState.active else InvitationState.used_up)
    membership = Membership(org_id=org_id, user_id=user.id, role=inv.role)
    session.add(membership)
    try:
        session.flush()
    except IntegrityError:
        # The same user accepting twice at once (unique membership), or the org deleted
        # meanwhile (foreign key); the rollback gives the use back.
        session.rollback()
        if session.get(Organization, org_id) is None:
            raise _not_found() from None
        raise _already_member() from None
    audit.record(
        session,
        org_id=org_id,
        actor=user,
        action="member.joined",
        target_type="user",
        target_id=user.id,
        after={"role": inv.role, "invitation_id": str(invitation_id), "prefix": inv.prefix},
    )
    org = session.get(Organization, org_id)
    if org is None:  # pragma: no cover - the foreign key check above fails first
        session.rollback()
        raise _not_found()
    session.commit()
    return org, membership
