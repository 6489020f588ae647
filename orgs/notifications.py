"""Webhook notifications: per-organization targets, a durable outbox, and delivery.

An org admin configures targets: a Slack incoming webhook (`kind="slack"`, the body is
`{"text": ...}`) or a generic webhook (`kind="webhook"`, a JSON envelope signed with the
target's secret). Each target subscribes to some of `EVENTS` (all when none are given).

Why an outbox: `emit()` only adds rows to the caller's session, so a notification
exists if and only if the change that caused it committed, and a crash or restart
between commit and delivery loses nothing. A background `Deliverer` thread in every API
process claims due rows (a lease on the row, `FOR UPDATE SKIP LOCKED` on PostgreSQL, so
replicas share the work), sends them with short timeouts, and on failure schedules a
retry with exponential backoff and jitter, giving up after `notifications_max_attempts`.
Delivery is at least once: a receiver dedupes on `X-CShare-Delivery`.

Signing (generic webhooks): `X-CShare-Timestamp: <unix seconds>` and
`X-CShare-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>`.
Binding the timestamp lets a receiver refuse replays older than a few minutes.

Where events come from:
- `member.joined`: any new non-owner membership (a session `before_flush` listener, so
  every path that adds a member is covered without each calling us);
- `member.left`: `orgs.cascade.on_member_removed` (leaving and being removed);
- `machine.pending_approval`: a machine row inserted or put back in status `pending`
  (the same listener);
- `machine.offline`: the delivery thread's sweep notices an approved machine whose last
  heartbeat is older than its org's `machines.offline_after_s` (once per silence);
- `job.failed`, `job.crashed`: the job code calls `emit()` where it records the state.

Server-side request forgery: only http(s) URLs, and every address the host resolves to
must be public (no loopback, private, link-local, metadata, multicast or reserved
ranges; loopback only with `CSHARE_NOTIFICATIONS_ALLOW_LOOPBACK`). The check is made
when the target is saved and again at each delivery, and the connection goes to the
address that was checked (DNS rebinding cannot swap it in between). Redirects are not
followed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    delete,
    event,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, UOWTransaction, mapped_column

from orgs import audit, cascade, metrics
from orgs.config import Settings
from orgs.context import OrgContext
from orgs.db import Base, Database, UTCDateTime, utcnow
from orgs.models import BigId, JSONType, Machine, Membership, Organization, User, new_id
from orgs.settings_doc import load as load_settings
from policies.errors import Invalid
from policies.permissions import Permission

__all__ = [
    "EVENTS",
    "Deliverer",
    "NotificationOutbox",
    "NotificationTarget",
    "TargetSpec",
    "deliver_due",
    "emit",
    "list_deliveries",
    "list_targets",
    "replace_targets",
    "send_test",
    "sign",
    "sweep_offline_machines",
    "validate_url",
]

log = logging.getLogger("cshare.notifications")

EVENTS: Final[tuple[str, ...]] = (
    "job.failed",
    "job.crashed",
    "machine.pending_approval",
    "machine.offline",
    "member.joined",
    "member.left",
)
TEST_EVENT: Final = "notification.test"
KINDS: Final = ("slack", "webhook")
MAX_TARGETS: Final = 10
MAX_URL_LENGTH: Final = 2048
MIN_SECRET_LENGTH: Final = 16
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# A claimed row is someone's for this long; after it the row is due again (the claimer
# crashed). Longer than one delivery can take (connect + read timeouts).
CLAIM_LEASE: Final = timedelta(seconds=60)
BATCH: Final = 20
SENDERS: Final = 4
# Only silences that started this recently are announced: adding a target must not
# bring a flood about machines that went quiet months ago.
OFFLINE_LOOKBACK: Final = timedelta(hours=24)
KEEP_DELIVERED: Final = timedelta(days=7)
USER_AGENT: Final = "cshare-notifications/0.1"


# ----------------------------------------------------------------------------- tables


class NotificationTarget(Base):
    """Where an organization's notifications go. The secret signs generic webhooks, so it
    is kept as given (it must be usable); it is never returned by the API."""

    __tablename__ = "notification_targets"
    __table_args__ = (Index("ix_notification_targets_org_id", "org_id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # slack | webhook
    url: Mapped[str] = mapped_column(String(MAX_URL_LENGTH))
    secret: Mapped[str | None] = mapped_column(String(256), nullable=True)
    events: Mapped[list[str]] = mapped_column(JSONType, default=list)  # [] = every event
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)


class NotificationOutbox(Base):
    """One delivery of one event to one target; written in the event's transaction."""

    __tablename__ = "notification_outbox"
    __table_args__ = (
        Index("ix_notification_outbox_due", "status", "next_attempt_at"),
        Index("ix_notification_outbox_org_id_id", "org_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    target_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("notification_targets.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class MachineOfflineNotice(Base):
    """The heartbeat after which a machine was last announced offline (one per silence)."""

    __tablename__ = "machine_offline_notices"

    machine_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), primary_key=True
    )
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)


# ------------------------------------------------------------------- URL validation


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _forbidden(address: Address, allow_loopback: bool) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:169.254.169.254 is still the metadata host
    if address.is_loopback:
        return not allow_loopback
    # `is_global` is False for private, link-local (169.254/16, fe80::/10, so the cloud
    # metadata hosts 169.254.169.254 and fd00:ec2::254 in fc00::/7), shared (100.64/10),
    # reserved, unspecified and documentation ranges.
    return not address.is_global or address.is_multicast


def _resolve(host: str, port: int) -> list[Address]:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    found: list[Address] = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        address = ipaddress.ip_address(text)
        if address not in found:
            found.append(address)
    return found


@dataclass(frozen=True, slots=True)
class CheckedUrl:
    url: str
    scheme: str
    host: str
    port: int
    address: Address  # the vetted address the connection must go to


def validate_url(url: str, *, field: str, allow_loopback: bool) -> CheckedUrl:
    """The URL, checked: http(s), a host, and only public addresses. `Invalid(field)`."""
    if len(url) > MAX_URL_LENGTH:
        raise Invalid(f"The URL may be at most {MAX_URL_LENGTH} characters.", field=field)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise Invalid("Not a valid URL.", field=field) from None
    if parts.scheme not in ("http", "https"):
        raise Invalid("Only http:// and https:// URLs are allowed.", field=field)
    host = parts.hostname
    if not host:
        raise Invalid("The URL has no host.", field=field)
    if parts.username or parts.password:
        raise Invalid("The URL may not carry a user name or password.", field=field)
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = _resolve(host, port)
    if not addresses:
        raise Invalid(f"The host '{host}' cannot be resolved.", field=field)
    bad = [a for a in addresses if _forbidden(a, allow_loopback)]
    if bad:
        raise Invalid(
            f"The host '{host}' resolves to {bad[0]}, an internal, private or metadata "
            "address; webhooks may only go to public addresses.",
            field=field,
        )
    return CheckedUrl(url.strip(), parts.scheme, host, port, addresses[0])


# ----------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class TargetSpec:
    kind: Literal["slack", "webhook"]
    url: str
    secret: str | None = None
    events: tuple[str, ...] = ()  # empty = every event


def _mask(url: str) -> str:
    """Scheme and host only: a Slack webhook URL's path is itself the credential."""
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
            raise Invalid("kind must be 'slack' or 'webhook'.", field=f"{field}.kind")
        checked = validate_url(
            spec.url, field=f"{field}.url", allow_loopback=settings.notifications_allow_loopback
        )
        unknown = [e for e in spec.events if e not in EVENTS]
        if unknown:
            raise Invalid(
                f"Unknown event '{unknown[0]}'; known: {', '.join(EVENTS)}.",
                field=f"{field}.events",
            )
        key = (spec.kind, checked.url)
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
                url=checked.url,
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
    # For the audit log: never the secret, nor a Slack URL's secret path.
    return {"kind": target.kind, "url": _mask(target.url), "events": list(target.events)}


# ------------------------------------------------------------------------------- emit


def emit(session: Session, org_id: uuid.UUID, event_name: str, payload: Mapping[str, Any]) -> int:
    """Queue `event_name` for every target of the org subscribed to it; no commit.

    Call inside the transaction that makes the event true: the deliveries then exist
    exactly when that transaction commits. Returns how many deliveries were queued (0,
    after one indexed query, when the org has no targets).
    `payload` must be JSON-serializable (ids as strings, times as ISO strings).
    """
    if event_name not in EVENTS and event_name != TEST_EVENT:
        raise ValueError(f"unknown notification event {event_name!r}")
    with session.no_autoflush:
        targets = session.execute(
            select(NotificationTarget.id, NotificationTarget.events).where(
                NotificationTarget.org_id == org_id
            )
        ).all()
    queued = 0
    data = json.loads(json.dumps(dict(payload), default=str))
    for target_id, events in targets:
        if event_name != TEST_EVENT and events and event_name not in events:
            continue
        session.add(
            NotificationOutbox(
                org_id=org_id,
                target_id=target_id,
                event=event_name,
                payload=data,
                status=PENDING,
                next_attempt_at=utcnow(),
            )
        )
        queued += 1
    if queued:
        _wake.set()
    return queued


def send_test(ctx: OrgContext, session: Session) -> int:
    """Queue a `notification.test` delivery to every target (admins); commits."""
    ctx.require(Permission.settings_update)
    queued = emit(
        session,
        ctx.org.id,
        TEST_EVENT,
        {"message": "A test notification from Compute Share.", "requested_by": ctx.user.name},
    )
    session.commit()
    return queued


def list_deliveries(
    session: Session, org_id: uuid.UUID, *, limit: int = 50
) -> list[NotificationOutbox]:
    return list(
        session.scalars(
            select(NotificationOutbox)
            .where(NotificationOutbox.org_id == org_id)
            .order_by(NotificationOutbox.id.desc())
            .limit(limit)
        )
    )


# ------------------------------------------------------------ where events come from


def _member_left(session: Session, org: Organization, user_id: uuid.UUID) -> None:
    user = session.get(User, user_id)
    emit(
        session,
        org.id,
        "member.left",
        {"user_id": str(user_id), "name": user.name if user else ""},
    )


cascade.on_member_removed(_member_left)


def _machine_payload(session: Session, machine: Machine) -> dict[str, Any]:
    owner = session.get(User, machine.owner_id) if machine.owner_id else None
    return {
        "machine_id": str(machine.id),
        "name": machine.name,
        "machine_type": machine.machine_type,
        "owner": owner.name if owner else "",
    }


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, _ctx: UOWTransaction, _instances: object) -> None:
    for obj in list(session.new):
        if isinstance(obj, Membership) and obj.role != "owner":
            # Owners only arrive by creating the organization: nothing to announce.
            user = session.get(User, obj.user_id)
            emit(
                session,
                obj.org_id,
                "member.joined",
                {"user_id": str(obj.user_id), "name": user.name if user else "", "role": obj.role},
            )
        elif isinstance(obj, Machine) and obj.status == "pending":
            if obj.id is None:
                obj.id = new_id()  # the payload names it; the default would come later
            emit(session, obj.org_id, "machine.pending_approval", _machine_payload(session, obj))
    for obj in list(session.dirty):
        if isinstance(obj, Machine) and obj.status == "pending":
            history = _history(obj, "status")
            if history and "pending" not in history:
                emit(
                    session, obj.org_id, "machine.pending_approval", _machine_payload(session, obj)
                )


def _history(obj: object, attr: str) -> list[Any] | None:
    """The attribute's previous values if it changed in this flush, else None."""
    from sqlalchemy import inspect

    state = inspect(obj)
    assert state is not None  # mapped instances always have an instance state
    hist = state.attrs[attr].history
    if not hist.added:
        return None
    return list(hist.deleted)


def sweep_offline_machines(db: Database, *, now: datetime | None = None) -> int:
    """Announce approved machines that went silent; once per silence. Returns how many.

    Only orgs with a target are looked at. Safe with several replicas: the notice row is
    updated or inserted under the transaction, and only the writer that changed it emits.
    """
    now = now or utcnow()
    notice = MachineOfflineNotice
    with db.transaction() as session:
        rows = session.execute(
            select(Machine, Organization.settings, notice.heartbeat_at)
            .join(Organization, Organization.id == Machine.org_id)
            .outerjoin(notice, notice.machine_id == Machine.id)
            .where(
                Machine.status == "approved",
                Machine.last_heartbeat_at.is_not(None),
                Machine.last_heartbeat_at < now - timedelta(seconds=5),
                Machine.last_heartbeat_at > now - OFFLINE_LOOKBACK,
                Machine.org_id.in_(select(NotificationTarget.org_id)),
            )
        ).all()
        announced = 0
        for machine, raw_settings, noticed in rows:
            heartbeat = machine.last_heartbeat_at
            assert heartbeat is not None
            if noticed is not None and noticed >= heartbeat:
                continue
            offline_after = load_settings(dict(raw_settings or {})).machines.offline_after_s
            if heartbeat > now - timedelta(seconds=offline_after):
                continue
            if not _mark_offline(session, machine.id, heartbeat, known=noticed is not None):
                continue
            payload = _machine_payload(session, machine)
            payload["last_heartbeat_at"] = heartbeat.isoformat()
            emit(session, machine.org_id, "machine.offline", payload)
            announced += 1
        return announced


def _mark_offline(
    session: Session, machine_id: uuid.UUID, heartbeat: datetime, known: bool
) -> bool:
    """Record the announcement; False when another replica recorded it first."""
    if known:
        result = session.execute(
            update(MachineOfflineNotice)
            .where(
                MachineOfflineNotice.machine_id == machine_id,
                MachineOfflineNotice.heartbeat_at < heartbeat,
            )
            .values(heartbeat_at=heartbeat)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0) == 1)
    try:
        with session.begin_nested():
            session.add(MachineOfflineNotice(machine_id=machine_id, heartbeat_at=heartbeat))
    except IntegrityError:
        return False
    return True


# --------------------------------------------------------------------------- delivery


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-CShare-Signature` value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


_SLACK_TEXT: Final[dict[str, str]] = {
    "job.failed": "Job {job_id} ({deployment}) of {user} failed: {reason}",
    "job.crashed": "Job {job_id} ({deployment}) of {user} crashed: {reason}",
    "machine.pending_approval": "Machine {name} ({machine_type}) of {owner} awaits approval.",
    "machine.offline": "Machine {name} ({machine_type}) of {owner} is offline "
    "(last heartbeat {last_heartbeat_at}).",
    "member.joined": "{name} joined as {role}.",
    "member.left": "{name} left the organization.",
    TEST_EVENT: "{message}",
}


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


@dataclass(frozen=True, slots=True)
class _Delivery:
    id: int
    org_slug: str
    event: str
    payload: dict[str, Any]
    created_at: datetime
    kind: str
    url: str
    secret: str | None
    attempts: int
    claim: datetime


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    status: int | None
    error: str


def _body(d: _Delivery) -> bytes:
    if d.kind == "slack":
        text = _SLACK_TEXT.get(d.event, d.event).format_map(_Blank(d.payload))
        return json.dumps({"text": f"[{d.org_slug}] {text}"}).encode()
    envelope = {
        "id": str(d.id),
        "event": d.event,
        "org": d.org_slug,
        "occurred_at": d.created_at.isoformat(),
        "data": d.payload,
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def _send(d: _Delivery, settings: Settings) -> _Outcome:
    try:
        checked = validate_url(
            d.url, field="url", allow_loopback=settings.notifications_allow_loopback
        )
    except Invalid as exc:
        return _Outcome(False, None, exc.detail)
    body = _body(d)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-CShare-Event": d.event,
        "X-CShare-Delivery": str(d.id),
    }
    if d.kind == "webhook" and d.secret:
        timestamp = int(time.time())
        headers["X-CShare-Timestamp"] = str(timestamp)
        headers["X-CShare-Signature"] = sign(d.secret, timestamp, body)
    # Connect to the address that was just vetted; Host and TLS SNI keep the name.
    parts = urlsplit(checked.url)
    ip = checked.address
    ip_host = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = f"{ip_host}:{checked.port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    default_port = 443 if checked.scheme == "https" else 80
    headers["Host"] = (
        checked.host if checked.port == default_port else f"{checked.host}:{checked.port}"
    )
    timeout = httpx.Timeout(
        settings.notifications_read_timeout_s,
        connect=settings.notifications_connect_timeout_s,
    )
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            client.stream(
                "POST",
                pinned,
                content=body,
                headers=headers,
                extensions={"sni_hostname": checked.host},
            ) as response,
        ):
            # The status is all we need: never read (or wait for) the body.
            status = response.status_code
    except httpx.TimeoutException:
        return _Outcome(False, None, "timed out")
    except httpx.HTTPError as exc:
        return _Outcome(False, None, f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= status < 300:
        return _Outcome(True, status, "")
    return _Outcome(False, status, f"HTTP {status}")


def _backoff(settings: Settings, attempts: int) -> float:
    base = settings.notifications_backoff_s * float(2 ** max(0, attempts - 1))
    # Jitter spreads the retries of many deliveries that failed together.
    capped: float = min(settings.notifications_backoff_max_s, base)
    return capped * random.uniform(0.8, 1.2)


def _claim(db: Database, now: datetime, limit: int) -> list[_Delivery]:
    box = NotificationOutbox
    with db.transaction() as session:
        ids = list(
            session.scalars(
                select(box.id)
                .where(
                    box.status == PENDING,
                    box.next_attempt_at <= now,
                    (box.locked_until.is_(None)) | (box.locked_until < now),
                )
                .order_by(box.next_attempt_at, box.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        if not ids:
            return []
        claim = now + CLAIM_LEASE
        session.execute(
            update(box)
            .where(box.id.in_(ids))
            .values(locked_until=claim)
            .execution_options(synchronize_session=False)
        )
        rows = session.execute(
            select(box, NotificationTarget, Organization.slug)
            .join(NotificationTarget, NotificationTarget.id == box.target_id)
            .join(Organization, Organization.id == box.org_id)
            .where(box.id.in_(ids))
        ).all()
        return [
            _Delivery(
                id=row.id,
                org_slug=slug,
                event=row.event,
                payload=dict(row.payload or {}),
                created_at=row.created_at,
                kind=target.kind,
                url=target.url,
                secret=target.secret,
                attempts=row.attempts,
                claim=claim,
            )
            for row, target, slug in rows
        ]


def _record(db: Database, d: _Delivery, outcome: _Outcome, settings: Settings) -> None:
    box = NotificationOutbox
    attempts = d.attempts + 1
    now = utcnow()
    values: dict[str, Any] = {
        "attempts": attempts,
        "locked_until": None,
        "last_status": outcome.status,
        "last_error": outcome.error,
    }
    if outcome.ok:
        values.update(status=DELIVERED, delivered_at=now)
        metrics.record_notification("delivered")
    elif attempts >= settings.notifications_max_attempts:
        values.update(status=FAILED)
        metrics.record_notification("failed")
        log.warning(
            "giving up on notification %s after %s attempts: %s", d.id, attempts, outcome.error
        )
    else:
        values.update(next_attempt_at=now + timedelta(seconds=_backoff(settings, attempts)))
        metrics.record_notification("retry")
    with db.transaction() as session:
        # Only while our claim holds: a delivery that outlived its lease was re-claimed.
        session.execute(
            update(box)
            .where(box.id == d.id, box.locked_until == d.claim)
            .values(**values)
            .execution_options(synchronize_session=False)
        )


def deliver_due(
    db: Database,
    settings: Settings,
    *,
    pool: ThreadPoolExecutor | None = None,
    limit: int = BATCH,
) -> int:
    """One pass: claim due deliveries, send them (concurrently), record the outcomes."""
    batch = _claim(db, utcnow(), limit)
    if not batch:
        return 0

    def one(d: _Delivery) -> None:
        outcome = _send(d, settings)
        _record(db, d, outcome, settings)

    if pool is None:
        for d in batch:
            one(d)
    else:
        # A hanging receiver costs one sender its timeout, not the others their turn.
        for future in [pool.submit(one, d) for d in batch]:
            future.result()
    return len(batch)


def _prune(db: Database) -> None:
    cutoff = utcnow() - KEEP_DELIVERED
    with db.transaction() as session:
        session.execute(
            delete(NotificationOutbox).where(
                NotificationOutbox.status.in_((DELIVERED, FAILED)),
                NotificationOutbox.created_at < cutoff,
            )
        )


_wake = threading.Event()


class Deliverer:
    """The background thread of one API process: deliveries, offline sweep, pruning."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="cshare-notify-send")
        self._thread = threading.Thread(target=self._run, name="cshare-notify", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        _wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._pool is not None:
            # Sends in flight end by their own timeouts; do not wait for them here.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _run(self) -> None:
        last_sweep = 0.0
        last_prune = 0.0
        while not self._stop.is_set():
            busy = False
            try:
                busy = deliver_due(self.db, self.settings, pool=self._pool) > 0
                if time.monotonic() - last_sweep > self.settings.notifications_offline_sweep_s:
                    last_sweep = time.monotonic()
                    sweep_offline_machines(self.db)
                if time.monotonic() - last_prune > 3600:
                    last_prune = time.monotonic()
                    _prune(self.db)
            except Exception:
                # The database restarting or a migration running must not end the thread.
                log.exception("notification delivery pass failed")
            if not busy:
                _wake.wait(self.settings.notifications_poll_s)
                _wake.clear()


def events_of(targets: Iterable[NotificationTarget]) -> list[str]:
    """Every event at least one of `targets` receives."""
    wanted: set[str] = set()
    for target in targets:
        wanted.update(target.events or EVENTS)
    return [e for e in EVENTS if e in wanted]
