"""The organization's audit log: GET /orgs/{org}/audit, newest first, keyset-paginated."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api.deps import Requires, SessionDep
from orgs import audit
from orgs.context import OrgContext
from policies.permissions import Permission

router = APIRouter(tags=["audit"])

AuditView = Annotated[OrgContext, Depends(Requires(Permission.audit_view))]


class AuditEventOut(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="The actor's user name at the time, or 'system'.")
    action: str
    target_type: str
    target_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: int | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


@router.get("/orgs/{org}/audit")
def list_audit(
    ctx: AuditView,
    session: SessionDep,
    action: Annotated[
        str | None, Query(max_length=64, description="Exact, or a prefix like 'member.*'.")
    ] = None,
    actor: Annotated[str | None, Query(max_length=64, description="User name.")] = None,
    target_id: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[datetime | None, Query(description="Inclusive; UTC if no zone.")] = None,
    until: Annotated[datetime | None, Query(description="Exclusive; UTC if no zone.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="Last id seen.")] = None,
) -> AuditPage:
    rows, next_cursor = audit.query(
        session,
        ctx.org.id,
        action=action,
        actor=actor,
        target_id=target_id,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    items = [
        AuditEventOut(
            id=e.id,
            at=e.created_at,
            actor=e.actor_name,
            action=e.action,
            target_type=e.target_type,
            target_id=e.target_id,
            before=e.before,
            after=e.after,
        )
        for e in rows
    ]
    return AuditPage(items=items, next_cursor=next_cursor)
