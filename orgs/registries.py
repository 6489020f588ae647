"""An organization's private Docker registries: `host[/namespace]` with a username and
a password, used by the org's machines to pull a container job's image.

The password is an org secret (orgs.secrets: sealed with the server key, rotated with
the others, never returned), named `REGISTRY_<id>`; this table says which image
references it is for. For an image, the most specific prefix wins: `acr.io/team` over
`acr.io`. Docker Hub is `docker.io` (`index.docker.io` and `registry-1.docker.io` mean
the same), and `alpine` is `docker.io/library/alpine`, as the docker CLI reads it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint, Uuid, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from orgs import audit, secret_box
from orgs.config import Settings
from orgs.context import OrgContext
from orgs.db import Base, UTCDateTime, utcnow
from orgs.models import new_id
from orgs.secrets import OrgSecret, check_value, reveal
from policies.errors import Conflict, Invalid, NotFound
from policies.permissions import Permission

__all__ = [
    "Credential",
    "OrgRegistry",
    "RegistryInfo",
    "add_registry",
    "credential_for",
    "image_path",
    "list_registries",
    "remove_registry",
]

DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# A DNS name or IPv4 address, optional port; then path components as Docker allows.
_HOST_RE = re.compile(
    r"(?:localhost|(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+)"
    r"(?::[0-9]{1,5})?"
)
_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
MAX_REF = 255


class OrgRegistry(Base):
    __tablename__ = "org_registries"
    __table_args__ = (UniqueConstraint("org_id", "prefix"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(255))
    username: Mapped[str] = mapped_column(String(255))
    secret_name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )


@dataclass(frozen=True, slots=True)
class RegistryInfo:
    """What may be shown about a registry: never its password."""

    id: uuid.UUID
    prefix: str
    username: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Credential:
    """The login for one image, for its job's machine only (never logged)."""

    registry: str  # the host to log in to
    prefix: str
    username: str
    password: str


def _info(row: OrgRegistry) -> RegistryInfo:
    return RegistryInfo(row.id, row.prefix, row.username, row.created_at, row.updated_at)


def _host(host: str) -> str:
    return DOCKER_HUB if host in _HUB_ALIASES else host


def check_prefix(prefix: str) -> str:
    """`HOST[:PORT][/NAMESPACE...]`, lowercased; 422 naming what is wrong."""
    if not isinstance(prefix, str) or not prefix.strip():
        raise Invalid("Give the registry as HOST[/NAMESPACE], e.g. myacr.azurecr.io/team.")
    value = prefix.strip().lower().removeprefix("https://").removeprefix("http://").rstrip("/")
    host, _, path = value.partition("/")
    if len(value) > MAX_REF or not _HOST_RE.fullmatch(host):
        raise Invalid(
            f"'{prefix}' is not a registry host: give HOST[:PORT][/NAMESPACE] with a DNS "
            "name or IP address as host (docker.io for Docker Hub, myacr.azurecr.io, "
            "127.0.0.1:5000).",
            field="registry",
            code="invalid_registry",
        )
    port = host.rpartition(":")[2] if ":" in host else None
    if port is not None and not 0 < int(port) < 65536:
        raise Invalid(f"'{prefix}': the port must be 1-65535.", field="registry")
    parts = path.split("/") if path else []
    for part in parts:
        if not _COMPONENT_RE.fullmatch(part):
            raise Invalid(
                f"'{prefix}': the namespace '{path}' is not a repository path (lowercase "
                "letters, digits, '.', '_', '-' between '/').",
                field="registry",
                code="invalid_registry",
            )
    return "/".join([_host(host), *parts])


def image_path(ref: str) -> tuple[str, str]:
    """(registry host, `host/repository` without tag or digest) of an image reference, as
    the docker CLI reads it; 422 for what is not an image reference."""
    bad = Invalid(
        f"'{ref}' is not an image reference: give [HOST[:PORT]/]NAME[:TAG][@DIGEST], "
        "e.g. myacr.azurecr.io/team/tool:1.",
        field="image",
        code="invalid_image",
    )
    if not isinstance(ref, str) or not ref or len(ref) > MAX_REF or ref != ref.strip():
        raise bad
    name, _, digest = ref.partition("@")
    if digest and not _DIGEST_RE.fullmatch(digest):
        raise bad
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise bad
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, path = first.lower(), rest
    else:
        host, path = DOCKER_HUB, name if "/" in name else f"library/{name}"
    if not _HOST_RE.fullmatch(host) or not all(_COMPONENT_RE.fullmatch(p) for p in path.split("/")):
        raise bad
    host = _host(host)
    return host, f"{host}/{path}"


def _secret_name(registry_id: uuid.UUID) -> str:
    return f"REGISTRY_{registry_id.hex[:16].upper()}"


def add_registry(
    ctx: OrgContext,
    session: Session,
    prefix: str,
    username: str,
    password: str,
    *,
    settings: Settings,
) -> tuple[RegistryInfo, bool]:
    """Add the registry `prefix` (or replace its login); (info, created). Audited with
    the prefix and username only. Commits."""
    ctx.require(Permission.registries_manage)
    prefix = check_prefix(prefix)
    if not isinstance(username, str) or not username.strip() or len(username) > 255:
        raise Invalid("Give the registry's username (1-255 characters).", field="username")
    check_value(password)
    now = utcnow()
    row = session.scalars(
        select(OrgRegistry)
        .where(OrgRegistry.org_id == ctx.org.id, OrgRegistry.prefix == prefix)
        .with_for_update()
    ).first()
    created = row is None
    if row is None:
        registry_id = new_id()
        row = OrgRegistry(
            id=registry_id,
            org_id=ctx.org.id,
            prefix=prefix,
            secret_name=_secret_name(registry_id),
            created_at=now,
            created_by=ctx.user.id,
        )
        session.add(row)
    row.username = username.strip()
    row.updated_at = now
    secret = session.scalars(
        select(OrgSecret).where(OrgSecret.org_id == ctx.org.id, OrgSecret.name == row.secret_name)
    ).first()
    if secret is None:
        secret = OrgSecret(org_id=ctx.org.id, name=row.secret_name, created_at=now)
        session.add(secret)
    secret.ciphertext = secret_box.encrypt(settings, password)
    secret.updated_at = now
    secret.updated_by = ctx.user.id
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="registry.added" if created else "registry.updated",
        target_type="registry",
        target_id=row.id,
        after={"prefix": prefix, "username": row.username},
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            f"The registry '{prefix}' was added by someone else at the same moment; try again.",
            code="registry_conflict",
        ) from None
    return _info(row), created


def list_registries(session: Session, org_id: uuid.UUID) -> list[RegistryInfo]:
    rows = session.scalars(
        select(OrgRegistry).where(OrgRegistry.org_id == org_id).order_by(OrgRegistry.prefix)
    )
    return [_info(r) for r in rows]


def _find(session: Session, org_id: uuid.UUID, key: str) -> OrgRegistry:
    """By id or by prefix (what `cshare registry remove` is given)."""
    stmt = select(OrgRegistry).where(OrgRegistry.org_id == org_id)
    try:
        stmt = stmt.where(OrgRegistry.id == uuid.UUID(key))
    except ValueError:
        try:
            stmt = stmt.where(OrgRegistry.prefix == check_prefix(key))
        except Invalid:
            stmt = stmt.where(OrgRegistry.prefix == key)
    row = session.scalars(stmt.with_for_update()).first()
    if row is None:
        raise NotFound(f"No registry '{key}' in this organization.", code="registry_not_found")
    return row


def remove_registry(ctx: OrgContext, session: Session, key: str) -> RegistryInfo:
    """Remove a registry and its password secret; audited. Commits."""
    ctx.require(Permission.registries_manage)
    row = _find(session, ctx.org.id, key)
    info = _info(row)
    secret = session.scalars(
        select(OrgSecret).where(OrgSecret.org_id == ctx.org.id, OrgSecret.name == row.secret_name)
    ).first()
    if secret is not None:
        session.delete(secret)
    session.delete(row)
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="registry.removed",
        target_type="registry",
        target_id=info.id,
        before={"prefix": info.prefix, "username": info.username},
    )
    session.commit()
    return info


def _covers(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def credential_for(
    session: Session, org_id: uuid.UUID, image: str, *, settings: Settings | None = None
) -> Credential | None:
    """The org's login for `image` (the most specific matching prefix), or None: the
    image is then pulled anonymously. For the control plane's job-scoped route only."""
    host, path = image_path(image)
    rows = [
        r
        for r in session.scalars(select(OrgRegistry).where(OrgRegistry.org_id == org_id))
        if _covers(r.prefix, path)
    ]
    if not rows:
        return None
    best = max(rows, key=lambda r: len(r.prefix))
    try:
        password = reveal(session, org_id, best.secret_name, settings=settings)
    except NotFound:
        raise NotFound(
            f"The password of registry '{best.prefix}' is gone (its secret "
            f"{best.secret_name} was deleted); an admin adds the registry again.",
            code="registry_secret_missing",
        ) from None
    return Credential(host, best.prefix, best.username, password)
