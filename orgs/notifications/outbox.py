"""The durable outbox: queueing (`emit`), claiming under a lease, recording outcomes.

`emit()` only adds rows to the caller's session, so a notification exists if and only
if the change that caused it committed. Deliverers claim due rows with a lease
(`FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas share the work); a row whose lease
ran out (its claimer crashed) is due again. Failures retry with exponential backoff and
jitter, up to `notifications_max_attempts`.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from orgs import metrics
from orgs.config import Settings, get_settings
from orgs.context import OrgContext
from orgs.db import Database, utcnow
from orgs.models import Organization, User
from orgs.notifications import channels, preferences
from orgs.notifications.events import EVENTS, JOB_EVENTS, TEST_EVENT, USER_EVENTS, subscribed
from orgs.notifications.models import (
    DELIVERED,
    FAILED,
    PENDING,
    NotificationOutbox,
    NotificationTarget,
)
from orgs.notifications.outcome import Outcome
from policies.permissions import Permission

log = logging.getLogger("cshare.notifications")

# A claimed row is someone's for this long; after it the row is due again (the claimer
# crashed). Longer than one delivery can take (connect + read timeouts).
CLAIM_LEASE: Final = timedelta(seconds=60)
KEEP_DELIVERED: Final = timedelta(days=7)

# Set when something was queued: the delivery thread wakes at once instead of polling.
wake = threading.Event()


def emit(session: Session, org_id: uuid.UUID, event_name: str, payload: Mapping[str, Any]) -> int:
    """Queue `event_name` for every target of the org subscribed to it, and for a
    `job.*` event the job owner's own e-mail when they asked for it; no commit.

    Call inside the transaction that makes the event true: the deliveries then exist
    exactly when that transaction commits. Returns how many deliveries were queued (0,
    after one indexed query, when the org has no targets and it is no job event).
    `payload` must be JSON-serializable (ids as strings, times as ISO strings); for
    `job.*` events it names the job's owner as `user_id`.
    """
    if event_name not in EVENTS and event_name not in USER_EVENTS and event_name != TEST_EVENT:
        raise ValueError(f"unknown notification event {event_name!r}")
    data: dict[str, Any] = json.loads(json.dumps(dict(payload), default=str))
    if event_name in USER_EVENTS:
        return _emit_to_user(session, org_id, event_name, data)
    owner = _job_owner(session, data) if event_name in JOB_EVENTS else None
    if owner is not None and not data.get("user"):
        data["user"] = owner.name  # messages name the owner; the id alone says little
    with session.no_autoflush:
        targets = session.execute(
            select(NotificationTarget.id, NotificationTarget.events).where(
                NotificationTarget.org_id == org_id
            )
        ).all()
    rows = [
        NotificationOutbox(org_id=org_id, target_id=target_id)
        for target_id, events in targets
        if subscribed(event_name, events)
    ]
    if owner is not None and _mails_owner(session, owner, event_name):
        rows.append(NotificationOutbox(org_id=org_id, user_id=owner.id))
    for row in rows:
        row.event, row.payload, row.status, row.next_attempt_at = (
            event_name,
            data,
            PENDING,
            utcnow(),
        )
        session.add(row)
    if rows:
        wake.set()
    return len(rows)


def _emit_to_user(
    session: Session, org_id: uuid.UUID, event_name: str, data: dict[str, Any]
) -> int:
    """The one e-mail of a `USER_EVENTS` event to the user it names; no preference (it
    answers something they asked for), but an address and SMTP are needed."""
    user = _job_owner(session, data)
    if user is None or not user.email or not channels.smtp_configured(get_settings()):
        return 0
    row = NotificationOutbox(org_id=org_id, user_id=user.id, event=event_name, payload=data)
    row.status, row.next_attempt_at = PENDING, utcnow()
    session.add(row)
    wake.set()
    return 1


def _job_owner(session: Session, data: dict[str, Any]) -> User | None:
    try:
        user_id = uuid.UUID(str(data.get("user_id")))
    except ValueError:
        return None
    with session.no_autoflush:
        return session.get(User, user_id)


def _mails_owner(session: Session, owner: User, event_name: str) -> bool:
    if not owner.email or not channels.smtp_configured(get_settings()):
        return False
    return preferences.mails(preferences.job_email(session, owner.id), event_name)


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
    """The org's latest deliveries to its targets (members' own e-mails are theirs)."""
    return list(
        session.scalars(
            select(NotificationOutbox)
            .where(NotificationOutbox.org_id == org_id, NotificationOutbox.target_id.is_not(None))
            .order_by(NotificationOutbox.id.desc())
            .limit(limit)
        )
    )


# ------------------------------------------------------------------ claim and record


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed outbox row with what sending it needs."""

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


def claim(db: Database, now: datetime, limit: int) -> list[Delivery]:
    """Lease up to `limit` due rows to this caller until `now + CLAIM_LEASE`."""
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
        until = now + CLAIM_LEASE
        session.execute(
            update(box)
            .where(box.id.in_(ids))
            .values(locked_until=until)
            .execution_options(synchronize_session=False)
        )
        rows = session.execute(
            select(box, NotificationTarget, User.email, Organization.slug)
            .outerjoin(NotificationTarget, NotificationTarget.id == box.target_id)
            .outerjoin(User, User.id == box.user_id)
            .join(Organization, Organization.id == box.org_id)
            .where(box.id.in_(ids))
        ).all()
        batch: list[Delivery] = []
        for row, target, email, slug in rows:
            if target is not None:
                kind, url, secret = target.kind, target.url, target.secret
            else:  # a member's own mail goes to their address as it is now
                kind, url, secret = "email", f"mailto:{email or ''}", None
            batch.append(
                Delivery(
                    id=row.id,
                    org_slug=slug,
                    event=row.event,
                    payload=dict(row.payload or {}),
                    created_at=row.created_at,
                    kind=kind,
                    url=url,
                    secret=secret,
                    attempts=row.attempts,
                    claim=until,
                )
            )
        return batch


def backoff(settings: Settings, attempts: int) -> float:
    base = settings.notifications_backoff_s * float(2 ** max(0, attempts - 1))
    # Jitter spreads the retries of many deliveries that failed together.
    capped: float = min(settings.notifications_backoff_max_s, base)
    return capped * random.uniform(0.8, 1.2)


def record(db: Database, d: Delivery, outcome: Outcome, settings: Settings) -> None:
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
        values.update(next_attempt_at=now + timedelta(seconds=backoff(settings, attempts)))
        metrics.record_notification("retry")
    with db.transaction() as session:
        # Only while our claim holds: a delivery that outlived its lease was re-claimed.
        session.execute(
            update(box)
            .where(box.id == d.id, box.locked_until == d.claim)
            .values(**values)
            .execution_options(synchronize_session=False)
        )


def prune(db: Database) -> None:
    cutoff = utcnow() - KEEP_DELIVERED
    with db.transaction() as session:
        session.execute(
            delete(NotificationOutbox).where(
                NotificationOutbox.status.in_((DELIVERED, FAILED)),
                NotificationOutbox.created_at < cutoff,
            )
        )
