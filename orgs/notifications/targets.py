"""An organization's notification targets: kinds, validation (SSRF included), storage.

Kinds: `slack`, `msteams`, `discord` (the webhook URL the service gave you; sent by
apprise), `email` (`mailto:<address>` or the address; sent through the operator's SMTP
server) and `webhook` (any public http(s) URL; a signed JSON envelope).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from orgs import audit
from orgs.config import Settings
from orgs.context import OrgContext
from orgs.notifications import channels
from orgs.notifications.addresses import validate_url
from orgs.notifications.events import DEFAULT_EVENTS, EVENTS
from orgs.notifications.models import MAX_URL_LENGTH, NotificationTarget
from policies.errors import Invalid
from policies.permissions import Permission

Kind = Literal["slack", "msteams", "discord", "email", "webhook"]
KINDS: Final[tuple[Kind, ...]] = ("slack", "msteams", "discord", "email", "webhook")
MAX_TARGETS: Final = 10
MIN_SECRET_LENGTH: Final = 16
# Deliberately plain: one address, no display name, no comments.
_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")


@dataclass(frozen=True, slots=True)
class TargetSpec:
    kind: Kind
    url: str
    secret: str | None = None
    events: tuple[str, ...] = ()  # empty = the default events (events.DEFAULT_EVENTS)


def email_address(url: str, *, field: str) -> str:
    """The address of an e-mail target (`mailto:a@b.example` or `a@b.example`)."""
    address = url.strip().removeprefix("mailto:")
    if len(address) > 320 or not _EMAIL.fullmatch(address):
        raise Invalid("Not an e-mail address.", field=field)
    return address


def check_url(kind: str, url: str, *, field: str, settings: Settings) -> str:
    """The target's URL as stored, after every check for its kind; `Invalid(field)`.

    Made when a target is saved and again before each delivery: the host that will be
    connected to must resolve to public addresses only.
    """
    if len(url) > MAX_URL_LENGTH:
        raise Invalid(f"The URL may be at most {MAX_URL_LENGTH} characters.", field=field)
    loopback = settings.notifications_allow_loopback
    if kind == "webhook":
        return validate_url(url, field=field, allow_loopback=loopback).url
    if kind == "email":
        if not channels.smtp_configured(settings):
            raise Invalid(
                "E-mail targets need the server's SMTP settings "
                "(CSHARE_SMTP_HOST and CSHARE_SMTP_FROM); ask its operator.",
                field=field,
            )
        return "mailto:" + email_address(url, field=field)
    plugin = channels.chat_plugin(kind, url, field=field)
    validate_url(channels.endpoint(plugin), field=field, allow_loopback=loopback)
    return url.strip()


def mask(url: str) -> str:
    """Scheme and host only: a chat webhook URL's path is itself the credential."""
    if url.startswith("mailto:"):
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/…" if parts.path else "", "", ""))


def list_targets(session: Session, org_id: uuid.UUID) -> list[NotificationTarget]:
    return list(
        session.scalars(
            select(NotificationTarget)
            .where(NotificationTarget.org_id == org_id)
            .order_by(NotificationTarget.created_at, NotificationTarget.id)
        )
    )


def replace_targets(
    ctx: OrgContext, session: Session, specs: Sequence[TargetSpec], *, settings: Settings
) -> list[NotificationTarget]:
    """Set the organization's targets to `specs` (admins); one commit, audited.

    A target whose kind and URL are unchanged keeps its id (so its pending deliveries
    survive) and, when no new secret is given, its secret: a client can send back what
    `GET` returned without knowing the secret.
    """
    ctx.require(Permission.settings_update)
    if len(specs) > MAX_TARGETS:
        raise Invalid(f"At most {MAX_TARGETS} targets.", field="targets")
    existing = {(t.kind, t.url): t for t in list_targets(session, ctx.org.id)}
    seen: set[tuple[str, str]] = set()
    kept: list[NotificationTarget] = []
    for i, spec in enumerate(specs):
        field = f"targets.{i}"
        if spec.kind not in KINDS:
            raise Invalid(f"kind must be one of {', '.join(KINDS)}.", field=f"{field}.kind")
        url = check_url(spec.kind, spec.url, field=f"{field}.url", settings=settings)
        unknown = [e for e in spec.events if e not in EVENTS]
        if unknown:
            raise Invalid(
                f"Unknown event '{unknown[0]}'; known: {', '.join(EVENTS)}.",
                field=f"{field}.events",
            )
        key = (spec.kind, url)
        if key in seen:
            raise Invalid("The same target is listed twice.", field=f"{field}.url")
        seen.add(key)
        old = existing.get(key)
        secret = spec.secret if spec.secret is not None else (old.secret if old else None)
        if spec.kind == "webhook":
            if not secret or len(secret) < MIN_SECRET_LENGTH:
                raise Invalid(
                    f"A webhook needs a secret of at least {MIN_SECRET_LENGTH} characters "
                    "to sign its deliveries.",
                    field=f"{field}.secret",
                )
        else:
            secret = None
        events = sorted(set(spec.events), key=EVENTS.index)
        if old is not None:
            old.secret, old.events = secret, events
            kept.append(old)
        else:
            target = NotificationTarget(
                org_id=ctx.org.id,
                kind=spec.kind,
                url=url,
                secret=secret,
                events=events,
                created_by=ctx.user.id,
            )
            session.add(target)
            kept.append(target)
    before = [_describe(t) for t in existing.values()]
    for old_key, old_target in existing.items():
        if old_key not in seen:
            session.delete(old_target)
    session.flush()
    after = [_describe(t) for t in kept]
    if before != after:
        audit.record(
            session,
            org_id=ctx.org.id,
            actor=ctx.user,
            action="notifications.updated",
            target_type="organization",
            target_id=ctx.org.id,
            before={"targets": before},
            after={"targets": after},
        )
    session.commit()
    return kept


def _describe(target: NotificationTarget) -> dict[str, Any]:
    # For the audit log: never the secret, nor a chat URL's secret path.
    return {"kind": target.kind, "url": mask(target.url), "events": list(target.events)}


def events_of(targets: Iterable[NotificationTarget]) -> list[str]:
    """Every event at least one of `targets` receives."""
    wanted: set[str] = set()
    for target in targets:
        wanted.update(target.events or DEFAULT_EVENTS)
    return [e for e in EVENTS if e in wanted]
