"""Organizations and their members: create, list, update, delete, leave, transfer, roles."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orgs import audit, cascade, join_requests, settings_doc
from orgs.context import OrgContext
from orgs.models import Membership, Organization, SettingsVersion, User
from policies.errors import Conflict, Forbidden, Invalid, NotFound
from policies.names import refuse_bidi
from policies.permissions import Permission, Role, may_assign

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
RESERVED_SLUGS = frozenset({"new", "api", "admin", "settings", "me", "auth", "invitations"})
# Prefect refuses work pools named "prefect..." and pools are named "<slug>-<type>".
RESERVED_SLUG_PREFIX = "prefect"


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return slug or "org"


def validate_org_name(name: str) -> str:
    refuse_bidi(name, field="name")
    name = name.strip()
    if not 1 <= len(name) <= 100 or any(ord(c) < 32 for c in name):
        raise Invalid("Organization names are 1-100 printable characters.", field="name")
    return name


def validate_description(description: str) -> str:
    if len(description) > 2000:
        raise Invalid("Descriptions may have at most 2000 characters.", field="description")
    return description


def is_reserved_slug(slug: str) -> bool:
    return slug in RESERVED_SLUGS or slug.startswith(RESERVED_SLUG_PREFIX)


def validate_slug(slug: str) -> str:
    refuse_bidi(slug, field="slug")
    if not SLUG_RE.fullmatch(slug) or is_reserved_slug(slug):
        raise Invalid(
            "Slugs are 1-40 lowercase letters, digits and inner '-', not a reserved word "
            "and not starting with 'prefect'.",
            field="slug",
        )
    return slug


def _snapshot(org: Organization) -> dict[str, str]:
    return {"name": org.name, "description": org.description, "slug": org.slug}


def create(
    session: Session, user: User, *, name: str, slug: str | None, description: str | None
) -> Organization:
    name = validate_org_name(name)
    description = validate_description(description or "")
    explicit = slug is not None
    slug = validate_slug(slug) if slug is not None else slugify(name)
    if not explicit and (
        is_reserved_slug(slug)
        or session.scalar(select(Organization.id).where(Organization.slug == slug))
    ):
        stem = slug.removeprefix(RESERVED_SLUG_PREFIX).strip("-")[:33] or "org"
        slug = f"{stem}-{secrets.token_hex(3)}"
    settings = settings_doc.default_settings()
    org = Organization(slug=slug, name=name, description=description, settings=settings)
    session.add(org)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"The slug '{slug}' is taken.", code="slug_taken") from exc
    session.add(Membership(org_id=org.id, user_id=user.id, role=Role.owner.value))
    session.add(SettingsVersion(org_id=org.id, version=1, settings=settings, created_by=user.id))
    audit.record(
        session,
        org_id=org.id,
        actor=user,
        action="org.created",
        target_type="organization",
        target_id=org.id,
        after=_snapshot(org),
    )
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"The slug '{slug}' is taken.", code="slug_taken") from exc
    return org


def list_mine(session: Session, user: User) -> Sequence[tuple[Organization, str]]:
    rows = session.execute(
        select(Organization, Membership.role)
        .join(Membership, Membership.org_id == Organization.id)
        .where(Membership.user_id == user.id)
        .order_by(Organization.name)
    ).all()
    return [(org, role) for org, role in rows]


def member_count(session: Session, org_id: uuid.UUID) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Membership).where(Membership.org_id == org_id)
        )
        or 0
    )


def stage_update(
    ctx: OrgContext, session: Session, *, name: str | None, description: str | None
) -> None:
    """Change name/description and write the audit row, without committing.

    For callers that commit several changes at once (`apply_settings`).
    """
    ctx.require(Permission.org_update)
    org = ctx.org
    before = _snapshot(org)
    if name is not None:
        org.name = validate_org_name(name)
    if description is not None:
        org.description = validate_description(description)
    after = _snapshot(org)
    if after != before:
        audit.record(
            session,
            org_id=org.id,
            actor=ctx.user,
            action="org.updated",
            target_type="organization",
            target_id=org.id,
            before=before,
            after=after,
        )


def update(
    ctx: OrgContext, session: Session, *, name: str | None, description: str | None
) -> Organization:
    stage_update(ctx, session, name=name, description=description)
    session.commit()
    return ctx.org


def apply_settings(
    ctx: OrgContext,
    session: Session,
    *,
    name: str | None = None,
    description: str | None = None,
    changes: Mapping[str, Any],
) -> settings_doc.OrgSettings:
    """`PUT /settings`: the organization's name/description and its settings, one commit."""
    ctx.require(Permission.settings_update)
    settings_doc.lock_org(ctx, session)
    if name is not None or description is not None:
        stage_update(ctx, session, name=name, description=description)
    new = settings_doc.stage(ctx, session, changes)
    session.commit()
    return new


def delete(ctx: OrgContext, session: Session, *, confirm: str) -> None:
    ctx.require(Permission.org_delete)
    if confirm != ctx.org.name:
        raise Invalid(
            "Type the organization's exact name in 'confirm' to delete it.", field="confirm"
        )
    cascade.delete_org(session, ctx.org, actor=ctx.user)


def _owners(session: Session, org_id: uuid.UUID) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Membership)
            .where(Membership.org_id == org_id, Membership.role == Role.owner.value)
        )
        or 0
    )


def leave(ctx: OrgContext, session: Session) -> None:
    ctx.require(Permission.org_leave)
    if ctx.role is Role.owner and _owners(session, ctx.org.id) <= 1:
        raise Conflict(
            "The last owner cannot leave; transfer ownership first (or delete the organization).",
            code="last_owner",
        )
    join_requests.record_departure(session, ctx.org, ctx.membership, how="left")
    cascade.remove_member(session, ctx.org, ctx.membership, actor=ctx.user, action="member.left")


def _membership(session: Session, org: Organization, user_id: uuid.UUID) -> Membership:
    m = session.scalars(
        select(Membership).where(Membership.org_id == org.id, Membership.user_id == user_id)
    ).first()
    if m is None:
        raise NotFound("No such member in this organization.", code="member_not_found")
    return m


def transfer_ownership(ctx: OrgContext, session: Session, *, user_id: uuid.UUID) -> Membership:
    ctx.require(Permission.org_transfer)
    target = _membership(session, ctx.org, user_id)
    if target.user_id == ctx.user.id:
        raise Invalid("You already own this organization.", field="user_id")
    before = {"owner": str(ctx.user.id), "new_owner_role": target.role}
    target.role = Role.owner.value
    ctx.membership.role = Role.admin.value
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="org.ownership_transferred",
        target_type="user",
        target_id=target.user_id,
        before=before,
        after={"owner": str(target.user_id), "previous_owner_role": Role.admin.value},
    )
    session.commit()
    return target


class MemberRow(NamedTuple):
    user_id: uuid.UUID
    name: str
    role: str
    joined_at: datetime


def list_members(
    session: Session, org: Organization, *, limit: int, offset: int
) -> tuple[list[MemberRow], int]:
    """One page of members, oldest first, and the total.

    Plain columns, not ORM objects: a page of 1,000 members stays a few milliseconds.
    """
    rows = session.execute(
        select(Membership.user_id, User.name, Membership.role, Membership.created_at)
        .join(User, User.id == Membership.user_id)
        .where(Membership.org_id == org.id)
        .order_by(Membership.created_at, Membership.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return [MemberRow(*row) for row in rows], member_count(session, org.id)


def change_role(ctx: OrgContext, session: Session, *, user_id: uuid.UUID, role: Role) -> Membership:
    ctx.require(Permission.members_manage)
    target = _membership(session, ctx.org, user_id)
    current = Role(target.role)
    if target.user_id == ctx.user.id:
        raise Forbidden("You cannot change your own role.", code="own_role")
    if role is Role.owner:
        raise Invalid("Ownership moves only through transfer-ownership.", field="role")
    if not may_assign(ctx.role, current, role):
        raise Forbidden(
            "Only the owner may grant, change or remove the admin role, and nobody may change "
            "the owner's role.",
            code="forbidden",
        )
    if current is not role:
        target.role = role.value
        audit.record(
            session,
            org_id=ctx.org.id,
            actor=ctx.user,
            action="member.role_changed",
            target_type="user",
            target_id=user_id,
            before={"role": current.value},
            after={"role": role.value},
        )
    session.commit()
    return target


def remove_member(
    ctx: OrgContext, session: Session, *, user_id: uuid.UUID, no_rejoin: bool = False
) -> None:
    """Remove a member; `no_rejoin` also refuses their requests to rejoin."""
    ctx.require(Permission.members_manage)
    target = _membership(session, ctx.org, user_id)
    if target.user_id == ctx.user.id:
        raise Invalid("Use leave to remove yourself.", field="user_id")
    if not may_assign(ctx.role, Role(target.role), None):
        raise Forbidden(
            "Only the owner may remove an admin, and the owner cannot be removed.", code="forbidden"
        )
    join_requests.record_departure(
        session, ctx.org, target, how="removed", no_rejoin=no_rejoin, actor=ctx.user
    )
    cascade.remove_member(session, ctx.org, target, actor=ctx.user, action="member.removed")
