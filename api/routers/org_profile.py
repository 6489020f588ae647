"""An organization's profile: its logo (members see it, admins change it) and the
requests to rejoin it.

- `PUT /orgs/{org}/logo` (admins): the image as the raw body (PNG, JPEG or WebP, at most
  1 MB; checked by content and re-encoded, see orgs/logos.py); `DELETE` removes it;
- `GET /orgs/{org}/logo` (members): the stored PNG, `image/png` and `nosniff`; 204 when
  the organization has none;
- `POST /orgs/{slug}/join-requests` (anyone signed in): ask to rejoin. Deliberately not
  under a membership rule: the same 202 for an unknown slug, an organization the caller
  was never in, and a request stored (orgs/join_requests.py says why and what differs);
- `GET /orgs/{org}/join-requests`, `POST .../{id}/approve|deny` (admins);
- `GET /me/join-requests`: the caller's own requests and their answers.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CurrentUser, Requires, SessionDep
from api.schemas import Page, PublicUserOut
from orgs import join_requests, logos
from orgs.context import OrgContext
from orgs.models import JoinRequest
from policies.errors import TooLarge
from policies.permissions import Permission, Role

router = APIRouter(tags=["organizations"])

OrgView = Annotated[OrgContext, Depends(Requires(Permission.org_view))]
OrgUpdate = Annotated[OrgContext, Depends(Requires(Permission.org_update))]
MembersManage = Annotated[OrgContext, Depends(Requires(Permission.members_manage))]

# A served logo is an image and nothing else, whatever a browser might guess.
LOGO_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Content-Disposition": 'inline; filename="logo.png"',
    "Cache-Control": "private, max-age=300",
}


class LogoOut(BaseModel):
    content_type: str
    bytes: int
    width: int
    height: int
    sha256: str
    updated_at: datetime


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` (never read whole first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(
            f"A logo may be at most {limit} bytes (1 MB).",
            used=int(declared),
            limit=limit,
            code="logo_too_large",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(
                f"A logo may be at most {limit} bytes (1 MB).",
                used=size,
                limit=limit,
                code="logo_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


@router.put(
    "/orgs/{org}/logo",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                t: {"schema": {"type": "string", "format": "binary"}}
                for t in logos.FORMATS.values()
            },
        }
    },
)
async def put_logo(request: Request, ctx: OrgUpdate, session: SessionDep) -> LogoOut:
    # One byte over the limit is enough to tell "too large" from "exactly 1 MB".
    data = await _read_limited(request, logos.MAX_BYTES)
    row = await run_in_threadpool(logos.set_logo, ctx, session, data)
    return LogoOut(
        content_type=row.content_type,
        bytes=len(row.content),
        width=row.width,
        height=row.height,
        sha256=row.sha256,
        updated_at=row.updated_at,
    )


@router.delete("/orgs/{org}/logo", status_code=status.HTTP_204_NO_CONTENT)
def delete_logo(ctx: OrgUpdate, session: SessionDep) -> None:
    logos.delete_logo(ctx, session)


@router.get(
    "/orgs/{org}/logo",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 204: {"description": "No logo set."}},
)
def get_logo(ctx: OrgView, session: SessionDep) -> Response:
    row = logos.get_logo(ctx, session)
    if row is None:
        return Response(status_code=204, headers={"X-Content-Type-Options": "nosniff"})
    return Response(
        row.content,
        media_type=row.content_type,
        headers={**LOGO_HEADERS, "ETag": f'"{row.sha256}"'},
    )


# ------------------------------------------------------------------ requests to rejoin


class JoinRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(default=None, max_length=join_requests.MAX_NOTE)


class SubmittedOut(BaseModel):
    status: Literal["received"] = "received"
    detail: str


class JoinRequestOut(BaseModel):
    id: uuid.UUID
    user: PublicUserOut
    note: str
    status: str
    created_at: datetime
    decided_at: datetime | None
    role: Role | None
    reason: str


class MyJoinRequestOut(BaseModel):
    id: uuid.UUID
    org: str = Field(description="The organization's slug.")
    org_name: str
    contact_email: str | None
    note: str
    status: str
    created_at: datetime
    decided_at: datetime | None
    role: Role | None
    reason: str


class ApproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role = Role.member


class DenyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=join_requests.MAX_NOTE)


def _out(r: JoinRequest) -> JoinRequestOut:
    return JoinRequestOut(
        id=r.id,
        user=PublicUserOut(id=r.user.id, name=r.user.name),
        note=r.note,
        status=r.status,
        created_at=r.created_at,
        decided_at=r.decided_at,
        role=Role(r.role) if r.role else None,
        reason=r.reason,
    )


RequestId = Annotated[uuid.UUID, Path(alias="id")]


@router.post("/orgs/{slug}/join-requests", status_code=status.HTTP_202_ACCEPTED)
def request_to_rejoin(
    slug: Annotated[str, Path(max_length=64)],
    user: CurrentUser,
    session: SessionDep,
    body: JoinRequestIn | None = None,
) -> SubmittedOut:
    answer = join_requests.request_to_rejoin(session, user, slug, body.note if body else None)
    return SubmittedOut(detail=answer.detail)


@router.get("/orgs/{org}/join-requests")
def list_join_requests(
    ctx: MembersManage,
    session: SessionDep,
    state: Annotated[
        Literal["pending", "approved", "denied", "all"],
        Query(alias="status", description="Which requests; default pending."),
    ] = "pending",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page[JoinRequestOut]:
    rows, total = join_requests.list_for_org(
        ctx, session, status=None if state == "all" else state, limit=limit, offset=offset
    )
    return Page(items=[_out(r) for r in rows], total=total, limit=limit, offset=offset)


@router.post("/orgs/{org}/join-requests/{id}/approve")
def approve_join_request(
    request_id: RequestId, ctx: MembersManage, session: SessionDep, body: ApproveIn | None = None
) -> JoinRequestOut:
    join_requests.approve(ctx, session, request_id, role=body.role if body else Role.member)
    req = session.get(JoinRequest, request_id)
    assert req is not None
    return _out(req)


@router.post("/orgs/{org}/join-requests/{id}/deny")
def deny_join_request(
    request_id: RequestId, ctx: MembersManage, session: SessionDep, body: DenyIn | None = None
) -> JoinRequestOut:
    join_requests.deny(ctx, session, request_id, reason=(body.reason or "") if body else "")
    req = session.get(JoinRequest, request_id)
    assert req is not None
    return _out(req)


@router.get("/me/join-requests")
def my_join_requests(user: CurrentUser, session: SessionDep) -> Page[MyJoinRequestOut]:
    rows = join_requests.list_mine(session, user)
    items = [
        MyJoinRequestOut(
            id=r.id,
            org=o.slug,
            org_name=o.name,
            contact_email=o.contact_email,
            note=r.note,
            status=r.status,
            created_at=r.created_at,
            decided_at=r.decided_at,
            role=Role(r.role) if r.role else None,
            reason=r.reason,
        )
        for r, o in rows
    ]
    return Page(items=items, total=len(items), limit=len(items), offset=0)
