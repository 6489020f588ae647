"""An organization's settings: invitations, machine approval and the limits document.

Stored as one JSON document on the organization; every change keeps the previous
version in `settings_versions` and writes an audit row, in one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orgs import audit, two_factor
from orgs.context import OrgContext
from orgs.models import Membership, SettingsVersion, User
from orgs.sso_settings import SsoSettings, refuse_lockout
from policies.errors import Conflict, Invalid
from policies.limits import DEFAULT_LIMITS, LimitsDocument, parse_limits
from policies.permissions import Permission


# Strict like the limits document: "12" or true are not numbers in a settings change.
class InvitationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    who_may_invite: Literal["admins", "members"] = "admins"
    default_expiry_hours: int = Field(168, ge=1, le=24 * 365)
    # Uses of an invitation created without `max_uses` (a link is for one person);
    # None: unlimited until it expires.
    default_max_uses: int | None = Field(1, ge=1, le=10_000)


class MachineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    approval_required: bool = True
    offline_after_s: int = Field(60, ge=5, le=86_400)


class StorageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # Bytes the organization's datasets may hold in all (every live version counted at
    # its size); enforced before an upload's bytes are stored. None: unlimited.
    max_bytes: int | None = Field(None, ge=0, le=1 << 62)


class SecuritySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # Members without two-factor get 403 on everything of the org (orgs.context); their
    # machines and running jobs are not stopped.
    require_2fa: bool = False


class ProjectSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # False: members may not create personal projects (visible only to their creator),
    # nor deploy into or run jobs of one (policies.visibility); admins still see them.
    allow_personal: bool = True


class OrgSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    invitations: InvitationSettings = InvitationSettings()
    machines: MachineSettings = MachineSettings()
    storage: StorageSettings = StorageSettings()
    security: SecuritySettings = SecuritySettings()
    projects: ProjectSettings = ProjectSettings()
    sso: SsoSettings = SsoSettings()
    limits: LimitsDocument = DEFAULT_LIMITS


SECTIONS = frozenset(
    {"invitations", "machines", "storage", "security", "projects", "sso", "limits"}
)
MERGED_SECTIONS = ("invitations", "machines", "storage", "security", "projects", "sso")


def default_settings() -> dict[str, Any]:
    return OrgSettings().model_dump(mode="json")


def load(raw: dict[str, Any]) -> OrgSettings:
    """The stored document as a model (stored documents were validated when written)."""
    data = dict(raw)
    limits = parse_limits(data.pop("limits", DEFAULT_LIMITS.model_dump(mode="json")))
    return OrgSettings.model_validate({**data, "limits": limits})


def _validate_sections(data: dict[str, Any]) -> dict[str, Any]:
    """Validate the non-limits sections, naming the offending key on error."""
    try:
        return OrgSettings.model_validate(data).model_dump(mode="json", exclude={"limits"})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise Invalid(f"{field}: {err['msg']}", field=field) from None


def _parse_limits_section(given: object) -> LimitsDocument:
    if isinstance(given, LimitsDocument):
        return given
    try:
        return parse_limits(given)
    except Invalid as exc:
        # Inside a settings body the document sits under `limits`; name the full path.
        field = f"limits.{exc.field}" if exc.field else "limits"
        raise Invalid(exc.detail, field=field) from None


def stage(ctx: OrgContext, session: Session, changes: Mapping[str, Any]) -> OrgSettings:
    """Validate and apply `changes` to the session (version row, audit row); no commit.

    For callers that commit several changes at once (`organizations.apply_settings`);
    they call `lock_org` first.
    """
    ctx.require(Permission.settings_update)
    unknown = set(changes) - SECTIONS
    if unknown:
        key = sorted(unknown)[0]
        raise Invalid(f"Unknown settings key '{key}'.", field=key)
    org = ctx.org
    current = load(org.settings)
    merged: dict[str, Any] = current.model_dump(mode="json", exclude={"limits"})
    for section in MERGED_SECTIONS:
        if section in changes:
            if not isinstance(changes[section], dict):
                raise Invalid(f"'{section}' must be a mapping.", field=section)
            merged[section] = {**merged[section], **changes[section]}
    merged = _validate_sections(merged)
    limits = current.limits
    if "limits" in changes:
        limits = _parse_limits_section(changes["limits"])
    new = OrgSettings.model_validate({**merged, "limits": limits})
    if new.security.require_2fa and not current.security.require_2fa:
        _check_can_require_2fa(ctx, session)
    refuse_lockout(current.sso, new.sso, ctx.signed_in_via)
    before = current.model_dump(mode="json")
    after = new.model_dump(mode="json")
    if after != before:
        org.settings = after
        org.settings_version += 1
        session.add(
            SettingsVersion(
                org_id=org.id, version=org.settings_version, settings=after, created_by=ctx.user.id
            )
        )
        audit.record(
            session,
            org_id=org.id,
            actor=ctx.user,
            action="settings.updated",
            target_type="organization",
            target_id=org.id,
            before=before,
            after=after,
        )
    return new


def _check_can_require_2fa(ctx: OrgContext, session: Session) -> None:
    # As GitHub does: whoever turns it on must have it, or they would lock themselves out.
    if not two_factor.is_enrolled(session, ctx.user.id):
        raise Conflict(
            "Enable two-factor authentication on your own account before requiring it "
            "(`cshare account 2fa enable`).",
            code="own_2fa_required",
        )


def members_without_2fa(session: Session, org_id: uuid.UUID) -> int:
    """How many members the org's `security.require_2fa` turns away."""
    enrolled = select(two_factor.UserTwoFactor.user_id).where(
        two_factor.UserTwoFactor.enabled_at.is_not(None)
    )
    count = session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.org_id == org_id, Membership.user_id.not_in(enrolled))
    )
    return int(count or 0)


def lock_org(ctx: OrgContext, session: Session) -> None:
    # Re-read the row under a lock so two concurrent updates cannot both build on the
    # same version (PostgreSQL; SQLite write transactions are already exclusive).
    session.refresh(ctx.org, with_for_update=True)


def update(ctx: OrgContext, session: Session, *, changes: Mapping[str, Any]) -> OrgSettings:
    """Apply a partial update: top-level sections given replace the stored ones.

    `changes` may hold `invitations`, `machines`, `storage` (merged key by key) and
    `limits` (the whole limits document, already parsed or as a mapping).
    """
    ctx.require(Permission.settings_update)
    lock_org(ctx, session)
    new = stage(ctx, session, changes)
    session.commit()
    return new


def versions(
    session: Session, org_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[tuple[SettingsVersion, str | None]], int]:
    """Stored versions newest first, each with the author's name (None if gone)."""
    rows = session.execute(
        select(SettingsVersion, User.name)
        .outerjoin(User, User.id == SettingsVersion.created_by)
        .where(SettingsVersion.org_id == org_id)
        .order_by(SettingsVersion.version.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    total = session.scalar(
        select(func.count()).select_from(SettingsVersion).where(SettingsVersion.org_id == org_id)
    )
    return [(v, n) for v, n in rows], int(total or 0)
