"""Audit rows, written inside the transaction of the change they describe."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orgs.models import AuditEvent, User


def record(
    session: Session,
    *,
    org_id: uuid.UUID | None,
    actor: User | None,
    action: str,
    target_type: str = "",
    target_id: object = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEvent(
            org_id=org_id,
            actor_id=actor.id if actor else None,
            actor_name=actor.name if actor else "system",
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            before=before,
            after=after,
        )
    )


def _aware(moment: datetime | None) -> datetime | None:
    # A timestamp without a zone is read as UTC (the column refuses naive datetimes).
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def query(
    session: Session,
    org_id: uuid.UUID,
    *,
    action: str | None = None,
    actor: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: int | None = None,
    limit: int = 100,
) -> tuple[list[AuditEvent], int | None]:
    """One page of the organization's log, newest first, and the cursor for the next.

    Keyset pagination on the (org_id, id) index: `cursor` is the last id already seen,
    so pages stay stable while new rows arrive. `action` matches exactly, or by prefix
    when it ends in `.*` (`member.*`). `since` is inclusive, `until` exclusive.
    """
    stmt = select(AuditEvent).where(AuditEvent.org_id == org_id)
    since, until = _aware(since), _aware(until)
    if cursor is not None:
        stmt = stmt.where(AuditEvent.id < cursor)
    if action:
        if action.endswith(".*"):
            prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            stmt = stmt.where(AuditEvent.action.like(prefix + "%", escape="\\"))
        else:
            stmt = stmt.where(AuditEvent.action == action)
    if actor:
        stmt = stmt.where(AuditEvent.actor_name == actor)
    if target_id:
        stmt = stmt.where(AuditEvent.target_id == target_id)
    if since is not None:
        stmt = stmt.where(AuditEvent.created_at >= since)
    if until is not None:
        stmt = stmt.where(AuditEvent.created_at < until)
    # One row more than asked tells whether another page exists.
    rows = list(session.scalars(stmt.order_by(AuditEvent.id.desc()).limit(limit + 1)))
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, rows[-1].id
    return rows, None
