"""Org secrets: named values (tokens, deploy keys, registry passwords) an org's admins set
and nobody reads back.

Stored encrypted with the server key (orgs.secret_box); the API, the console, the audit
log and error messages only ever carry names and timestamps. `reveal` is the one way to
the plaintext, for the control plane itself: delivering a secret to the org's machine for
the job that needs it is a later step (issue 13) and must go through the job's
credential, never through a user-facing route.

Names look like environment variables (`GITHUB_TOKEN`): `[A-Z][A-Z0-9_]{0,63}`, so a
secret can become one on the machine without renaming.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint, Uuid, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from orgs import audit, secret_box
from orgs.config import Settings, get_settings
from orgs.context import OrgContext
from orgs.db import Base, UTCDateTime, utcnow
from orgs.models import Organization, User, new_id
from policies.errors import Conflict, Invalid, NotFound
from policies.permissions import Permission

NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
MAX_VALUE_BYTES = 64 * 1024


class OrgSecret(Base):
    __tablename__ = "org_secrets"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    # A Fernet token (base64 text): never the value itself.
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What may be shown about a secret: everything but its value."""

    name: str
    created_at: datetime
    updated_at: datetime
    updated_by_id: uuid.UUID | None
    updated_by_name: str | None


def check_name(name: str) -> str:
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise Invalid(
            "A secret's name is 1 to 64 characters of A-Z, 0-9 and _, starting with a "
            "letter (like an environment variable: GITHUB_TOKEN).",
            field="name",
            code="invalid_secret_name",
        )
    return name


def check_value(value: str) -> str:
    # The messages never quote the value.
    if not isinstance(value, str) or not value:
        raise Invalid("The secret's value may not be empty.", field="value")
    size = len(value.encode("utf-8"))
    if size > MAX_VALUE_BYTES:
        raise Invalid(
            f"The secret's value is {size} bytes; at most {MAX_VALUE_BYTES // 1024} KiB.",
            field="value",
            code="secret_too_large",
        )
    return value


def _not_found(name: str) -> NotFound:
    return NotFound(f"No secret named '{name}' in this organization.", code="secret_not_found")


def _info(row: OrgSecret, author: str | None) -> SecretInfo:
    return SecretInfo(row.name, row.created_at, row.updated_at, row.updated_by, author)


def _find(session: Session, org_id: uuid.UUID, name: str, *, lock: bool = False) -> OrgSecret:
    stmt = select(OrgSecret).where(OrgSecret.org_id == org_id, OrgSecret.name == name)
    if lock:
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).first()
    if row is None:
        raise _not_found(name)
    return row


def set_secret(
    ctx: OrgContext, session: Session, name: str, value: str, *, settings: Settings
) -> SecretInfo:
    """Create or replace the secret `name`; audited as `secret.set` (name only). Commits."""
    ctx.require(Permission.secrets_manage)
    return store(ctx, session, name, value, settings=settings)


def store(
    ctx: OrgContext, session: Session, name: str, value: str, *, settings: Settings
) -> SecretInfo:
    """`set_secret` for a secret the caller already authorized (a project's deploy key:
    its creator or an admin, flows.git_credentials). Commits."""
    check_name(name)
    check_value(value)
    ciphertext = secret_box.encrypt(settings, value)
    now = utcnow()
    try:
        row = _find(session, ctx.org.id, name, lock=True)
        created = False
    except NotFound:
        row = OrgSecret(org_id=ctx.org.id, name=name, created_at=now)
        session.add(row)
        created = True
    row.ciphertext = ciphertext
    row.updated_at = now
    row.updated_by = ctx.user.id
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="secret.set",
        target_type="secret",
        target_id=name,
        after={"name": name, "created": created},
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            f"The secret '{name}' was created by someone else at the same moment; try again.",
            code="secret_conflict",
        ) from None
    return _info(row, ctx.user.name)


def delete_secret(ctx: OrgContext, session: Session, name: str) -> None:
    """Delete the secret `name`; audited as `secret.deleted` (name only). Commits."""
    ctx.require(Permission.secrets_manage)
    remove(ctx, session, name)


def remove(ctx: OrgContext, session: Session, name: str) -> None:
    """`delete_secret` for a secret the caller already authorized. Commits."""
    check_name(name)
    row = _find(session, ctx.org.id, name, lock=True)
    session.delete(row)
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="secret.deleted",
        target_type="secret",
        target_id=name,
        before={"name": name},
    )
    session.commit()


def info(session: Session, org_id: uuid.UUID, name: str) -> SecretInfo | None:
    """What may be shown about the org's secret `name` (no value), or None."""
    row = session.execute(
        select(OrgSecret, User.name)
        .outerjoin(User, User.id == OrgSecret.updated_by)
        .where(OrgSecret.org_id == org_id, OrgSecret.name == check_name(name))
    ).first()
    return None if row is None else _info(row[0], row[1])


def list_secrets(
    session: Session, org_id: uuid.UUID, *, limit: int = 100, offset: int = 0
) -> tuple[list[SecretInfo], int]:
    """One page of the org's secrets by name (no values), and how many there are."""
    total = session.scalar(
        select(func.count()).select_from(OrgSecret).where(OrgSecret.org_id == org_id)
    )
    rows = session.execute(
        select(OrgSecret, User.name)
        .outerjoin(User, User.id == OrgSecret.updated_by)
        .where(OrgSecret.org_id == org_id)
        .order_by(OrgSecret.name)
        .limit(limit)
        .offset(offset)
    ).all()
    return [_info(row, author) for row, author in rows], int(total or 0)


def reveal(
    session: Session, org_id: uuid.UUID, name: str, *, settings: Settings | None = None
) -> str:
    """The plaintext of the org's secret `name`, for the control plane only.

    Never hand the result to a user-facing response or a log line. Later: the job's
    machine receives the secrets its job needs over the job credential (issue 13).
    """
    row = _find(session, org_id, check_name(name))
    return secret_box.decrypt(settings or get_settings(), row.ciphertext, label=f"'{name}'")


def rotate_all(session: Session, settings: Settings) -> int:
    """Re-encrypt every org's secrets with the first key; one transaction, all or none.

    A secret no configured key opens stops the whole rotation with its org and name.
    """
    rows = session.execute(
        select(OrgSecret, Organization.slug)
        .join(Organization, Organization.id == OrgSecret.org_id)
        .order_by(OrgSecret.org_id, OrgSecret.name)
        .with_for_update(of=OrgSecret)
    ).all()
    for row, slug in rows:
        row.ciphertext = secret_box.reencrypt(
            settings, row.ciphertext, label=f"'{row.name}' of organization '{slug}'"
        )
    audit.record(
        session, org_id=None, actor=None, action="secrets.rotated", after={"count": len(rows)}
    )
    session.commit()
    return len(rows)
