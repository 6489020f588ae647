"""The organization's logo (shown in the console's sidebar), deciding requests to rejoin
(admins, on the members page), and asking to rejoin (`/rejoin`, any signed-in user).

The same services and permissions as the REST routes (api/routers/org_profile.py); the
logo is served with the same fixed type and `nosniff`.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from api.deps import SessionDep
from api.errors import status_for
from api.routers.org_profile import LOGO_HEADERS
from api.web.core import OrgPage, PageRequires, redirect, render
from api.web.routes_settings import settings_response
from api.web.session import Viewer, ViewerDep
from orgs import join_requests, logos
from policies.errors import DomainError, Invalid
from policies.permissions import Permission, Role

router = APIRouter()

PageOrgView = Annotated[OrgPage, Depends(PageRequires(Permission.org_view))]
PageOrgUpdate = Annotated[OrgPage, Depends(PageRequires(Permission.org_update))]
PageMembersManage = Annotated[OrgPage, Depends(PageRequires(Permission.members_manage))]
RequestId = Annotated[uuid.UUID, PathParam()]


@router.get("/orgs/{org}/logo")
def logo(page: PageOrgView) -> Response:
    row = logos.get_logo(page.ctx, page.session)
    if row is None:
        return Response(status_code=204, headers={"X-Content-Type-Options": "nosniff"})
    return Response(
        row.content,
        media_type=row.content_type,
        headers={**LOGO_HEADERS, "ETag": f'"{row.sha256}"'},
    )


@router.post("/orgs/{org}/settings/logo")
async def upload_logo(
    request: Request,
    page: PageOrgUpdate,
    file: Annotated[UploadFile | None, File(alias="logo")] = None,
) -> Response:
    try:
        if file is None:
            raise Invalid("Choose an image file.", field="logo")
        # One byte over the limit tells "too large" from "exactly 1 MB".
        data = await file.read(logos.MAX_BYTES + 1)
        await run_in_threadpool(logos.set_logo, page.ctx, page.session, data)
    except DomainError as exc:
        return await run_in_threadpool(
            settings_response, request, page, status_for(exc), {"logo": exc.detail}
        )
    return redirect(page.url("/settings"), notice="logo_set")


@router.post("/orgs/{org}/settings/logo/delete")
def delete_logo(page: PageOrgUpdate) -> Response:
    logos.delete_logo(page.ctx, page.session)
    return redirect(page.url("/settings"), notice="logo_removed")


@router.post("/orgs/{org}/join-requests/{request_id}/approve")
def approve(
    page: PageMembersManage,
    request_id: RequestId,
    role: Annotated[str, Form(max_length=16)] = "member",
) -> Response:
    if role not in Role.__members__:
        raise Invalid("Pick a role.", field="role")
    join_requests.approve(page.ctx, page.session, request_id, role=Role(role))
    return redirect(page.url("/members"), notice="request_approved")


@router.post("/orgs/{org}/join-requests/{request_id}/deny")
def deny(
    page: PageMembersManage,
    request_id: RequestId,
    reason: Annotated[str, Form(max_length=join_requests.MAX_NOTE)] = "",
) -> Response:
    join_requests.deny(page.ctx, page.session, request_id, reason=reason)
    return redirect(page.url("/members"), notice="request_denied")


# ------------------------------------------------------------------ asking to rejoin


def _rejoin_page(
    request: Request,
    viewer: Viewer,
    session: SessionDep,
    *,
    status_code: int = 200,
    slug: str = "",
    error: str | None = None,
) -> Response:
    return render(
        request,
        "rejoin.html",
        viewer=viewer,
        status_code=status_code,
        slug=slug,
        error=error,
        former=join_requests.former_orgs(session, viewer.user),
        mine=join_requests.list_mine(session, viewer.user),
    )


@router.get("/rejoin")
def rejoin(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    org: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    return _rejoin_page(request, viewer, session, slug=org)


@router.post("/rejoin")
def ask_to_rejoin(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    org: Annotated[str, Form(max_length=64)],
    note: Annotated[str, Form(max_length=join_requests.MAX_NOTE)] = "",
) -> Response:
    try:
        answer = join_requests.request_to_rejoin(session, viewer.user, org.strip(), note)
    except DomainError as exc:
        session.rollback()
        return _rejoin_page(
            request,
            viewer,
            session,
            status_code=status_for(exc),
            slug=org,
            error=exc.detail,
        )
    # The same redirect and sentence whatever the slug named (see orgs.join_requests).
    assert answer.detail == join_requests.SUBMITTED
    return redirect("/rejoin", notice="rejoin_sent")
