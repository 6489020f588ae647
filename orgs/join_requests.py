"""Requests to rejoin: a former member asks, an admin approves (with a role) or denies.

Who may ask: someone who left or was removed (`FormerMember`, written by
`organizations.leave` / `remove_member`), unless an admin removed them with "do not
allow rejoin".

Probing: asking is the one thing a non-member can do with an organization's slug, so
`request_to_rejoin` answers the same (`Submitted`, HTTP 202 with the same sentence)
when the slug names no organization, an organization the caller was never in, or one
they may ask to rejoin, and stores nothing in the first two cases. The statements run
are the same in all three (look the org up, look the former membership up), and a
request that is stored commits before the answer, so the answers differ by one insert.
Only people who were members get a different answer: a current member 409
(`already_member`), a user blocked from rejoining 403 (`rejoin_blocked`; they know the
organization exists, having been in it; a clear answer beats a request that silently
goes nowhere), and 429 after a denial within `DENIED_COOLDOWN`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orgs import audit, notifications
from orgs.context import OrgContext
from orgs.db import utcnow
from orgs.models import FormerMember, JoinRequest, Membership, Organization, User
from policies.errors import Conflict, Forbidden, Invalid, NotFound, TooManyAttempts
from policies.names import refuse_bidi
from policies.permissions import Permission, Role, denial, may_assign

PENDING: Final = "pending"
APPROVED: Final = "approved"
DENIED: Final = "denied"
STATUSES: Final = (PENDING, APPROVED, DENIED)
MAX_NOTE: Final = 1000
# After a denial the same person may ask again only after this long.
DENIED_COOLDOWN: Final = timedelta(days=1)

SUBMITTED: Final = (
    "Request received. If you were a member of this organization and may rejoin, its "
    "admins will see your request and you will be told their answer."
)


@dataclass(frozen=True, slots=True)
class Submitted:
    """The one answer to a request, whatever the slug named (see the module docstring)."""

    detail: str = SUBMITTED


def _text(value: str | None, *, field: str) -> str:
    value = (value or "").strip()
    refuse_bidi(value, field=field)
    if len(value) > MAX_NOTE:
        raise Invalid(f"{field} may have at most {MAX_NOTE} characters.", field=field)
    if any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise Invalid(f"{field} may not contain control characters.", field=field)
    return value


def record_departure(
    session: Session,
    org: Organization,
    membership: Membership,
    *,
    how: str,
    no_rejoin: bool = False,
    actor: User | None = None,
) -> None:
    """Remember who left (`how`: left or removed); staged, the caller commits."""
    row = session.get(FormerMember, (org.id, membership.user_id))
    if row is None:
        row = FormerMember(org_id=org.id, user_id=membership.user_id)
        session.add(row)
    row.how, row.role, row.left_at = how, membership.role, utcnow()
    row.rejoin_blocked = no_rejoin
    row.blocked_by = actor.id if no_rejoin and actor is not None else None
    if no_rejoin:
        audit.record(
            session,
            org_id=org.id,
            actor=actor,
            action="member.rejoin_blocked",
            target_type="user",
            target_id=membership.user_id,
            after={"rejoin_blocked": True},
        )


def request_to_rejoin(session: Session, user: User, slug: str, note: str | None) -> Submitted:
    """Ask to rejoin the organization `slug`; commits when a request is stored."""
    note = _text(note, field="note")
    org = session.scalars(select(Organization).where(Organization.slug == slug[:64])).first()
    org_id = org.id if org is not None else uuid.uuid4()  # the same lookups either way
    member = session.scalar(
        select(Membership.id).where(Membership.org_id == org_id, Membership.user_id == user.id)
    )
    former = session.get(FormerMember, (org_id, user.id))
    if org is None or (member is None and former is None):
        return Submitted()
    if member is not None:
        raise Conflict("You are already a member of this organization.", code="already_member")
    assert former is not None
    if former.rejoin_blocked:
        raise Forbidden(
            "An admin removed you from this organization and does not allow requests to "
            "rejoin. Ask its admins directly if you think this is a mistake.",
            code="rejoin_blocked",
        )
    latest = session.scalars(
        select(JoinRequest)
        .where(JoinRequest.org_id == org.id, JoinRequest.user_id == user.id)
        .order_by(JoinRequest.created_at.desc())
        .limit(1)
    ).first()
    now = utcnow()
    if latest is not None and latest.status == PENDING:
        if note and note != latest.note:  # a newer note replaces the pending one's
            latest.note = note
            session.commit()
        return Submitted()
    if (
        latest is not None
        and latest.status == DENIED
        and latest.decided_at is not None
        and latest.decided_at > former.left_at
        and now - latest.decided_at < DENIED_COOLDOWN
    ):
        wait = DENIED_COOLDOWN - (now - latest.decided_at)
        raise TooManyAttempts(
            "Your last request to rejoin was denied; you may ask again in "
            f"{max(1, int(wait.total_seconds() // 3600))} hour(s).",
            retry_after_s=max(1, int(wait.total_seconds())),
            code="recently_denied",
        )
    req = JoinRequest(org_id=org.id, user_id=user.id, note=note, status=PENDING, reason="")
    session.add(req)
    try:
        session.flush()
    except IntegrityError:  # the same person asking twice at once: one request stands
        session.rollback()
        return Submitted()
    audit.record(
        session,
        org_id=org.id,
        actor=user,
        action="join_request.created",
        target_type="join_request",
        target_id=req.id,
        after={"user_id": str(user.id), "note": note},
    )
    notifications.emit(
        session,
        org.id,
        "join_request.created",
        {"request_id": str(req.id), "user_id": str(user.id), "name": user.name, "note": note},
    )
    session.commit()
    return Submitted()


def list_for_org(
    ctx: OrgContext, session: Session, *, status: str | None = PENDING, limit: int, offset: int
) -> tuple[list[JoinRequest], int]:
    """Requests to rejoin the organization, oldest first (admins)."""
    ctx.require(Permission.members_manage)
    where = [JoinRequest.org_id == ctx.org.id]
    if status is not None:
        if status not in STATUSES:
            raise Invalid(f"status is one of {', '.join(STATUSES)}.", field="status")
        where.append(JoinRequest.status == status)
    rows = list(
        session.scalars(
            select(JoinRequest)
            .where(*where)
            .order_by(JoinRequest.created_at, JoinRequest.id)
            .limit(limit)
            .offset(offset)
        )
    )
    total = session.scalar(select(func.count()).select_from(JoinRequest).where(*where))
    return rows, int(total or 0)


def list_mine(session: Session, user: User) -> list[tuple[JoinRequest, Organization]]:
    """The caller's own requests, newest first, with their organizations."""
    rows = session.execute(
        select(JoinRequest, Organization)
        .join(Organization, Organization.id == JoinRequest.org_id)
        .where(JoinRequest.user_id == user.id)
        .order_by(JoinRequest.created_at.desc())
        .limit(100)
    ).all()
    return [(r, o) for r, o in rows]


def former_orgs(session: Session, user: User) -> list[tuple[Organization, FormerMember]]:
    """Organizations the caller left or was removed from (they know of them)."""
    rows = session.execute(
        select(Organization, FormerMember)
        .join(FormerMember, FormerMember.org_id == Organization.id)
        .where(FormerMember.user_id == user.id)
        .order_by(FormerMember.left_at.desc())
        .limit(100)
    ).all()
    return [(o, f) for o, f in rows]


def _pending(ctx: OrgContext, session: Session, request_id: uuid.UUID) -> JoinRequest:
    # Locked, so two admins deciding at once cannot both act (the user is joined eagerly:
    # only the request's own row can be locked).
    req = session.scalars(
        select(JoinRequest).where(JoinRequest.id == request_id).with_for_update(of=JoinRequest)
    ).first()
    # Another org's request is "not found", never "forbidden".
    if req is None or req.org_id != ctx.org.id:
        raise NotFound("No such request to rejoin.", code="join_request_not_found")
    if req.status != PENDING:
        raise Conflict(f"This request was already {req.status}.", code="join_request_decided")
    return req


def approve(
    ctx: OrgContext, session: Session, request_id: uuid.UUID, *, role: Role = Role.member
) -> Membership:
    """Make the requester a member with `role`; audited, the requester is told."""
    ctx.require(Permission.members_manage)
    if role is Role.owner:
        raise Invalid("Nobody joins as owner; ownership moves only through transfer.", field="role")
    if not may_assign(ctx.role, None, role):
        raise Forbidden(denial(Permission.admins_manage), code="forbidden")
    req = _pending(ctx, session, request_id)
    already = session.scalar(
        select(Membership.id).where(
            Membership.org_id == ctx.org.id, Membership.user_id == req.user_id
        )
    )
    if already is not None:
        raise Conflict("The requester is already a member again.", code="already_member")
    membership = Membership(org_id=ctx.org.id, user_id=req.user_id, role=role.value)
    session.add(membership)
    former = session.get(FormerMember, (ctx.org.id, req.user_id))
    if former is not None:
        session.delete(former)
    req.status, req.role, req.decided_at, req.decided_by = (
        APPROVED,
        role.value,
        utcnow(),
        ctx.user.id,
    )
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="join_request.approved",
        target_type="join_request",
        target_id=req.id,
        before={"status": PENDING},
        after={"status": APPROVED, "user_id": str(req.user_id), "role": role.value},
    )
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="member.joined",
        target_type="user",
        target_id=req.user_id,
        after={"role": role.value, "join_request_id": str(req.id)},
    )
    _tell(session, ctx, req, "join_request.approved", role=role.value)
    session.commit()
    return membership


def deny(ctx: OrgContext, session: Session, request_id: uuid.UUID, *, reason: str = "") -> None:
    """Refuse the request; audited, the requester is told (with the reason, if any)."""
    ctx.require(Permission.members_manage)
    reason = _text(reason, field="reason")
    req = _pending(ctx, session, request_id)
    req.status, req.reason, req.decided_at, req.decided_by = DENIED, reason, utcnow(), ctx.user.id
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="join_request.denied",
        target_type="join_request",
        target_id=req.id,
        before={"status": PENDING},
        after={"status": DENIED, "user_id": str(req.user_id), "reason": reason},
    )
    _tell(session, ctx, req, "join_request.denied", reason=reason)
    session.commit()


def _tell(session: Session, ctx: OrgContext, req: JoinRequest, event: str, **extra: str) -> None:
    payload = {
        "request_id": str(req.id),
        "user_id": str(req.user_id),
        "org_name": ctx.org.name,
        "contact_email": ctx.org.contact_email or "",
        **extra,
    }
    notifications.emit(session, ctx.org.id, event, payload)
