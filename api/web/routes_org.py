"""Dashboard, leaving an organization, members and invitations."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi import Path as PathParam
from fastapi.responses import Response

from api import format as fmt
from api.errors import status_for
from api.routers.invitations import invitation_link
from api.routers.overview import own_usage
from api.web.chart import Bar, bar_chart
from api.web.core import OrgPage, PageRequires, redirect, render, settings_of, who_may_invite
from orgs import (
    capacity,
    invitations,
    join_requests,
    organizations,
    settings_doc,
    two_factor,
    usage_views,
)
from policies.errors import DomainError, Invalid
from policies.permissions import Permission, Role, may_assign

router = APIRouter()

PageInvitationsCreateIfAllowed = Annotated[
    OrgPage, Depends(PageRequires(Permission.invitations_create_if_allowed))
]
PageInvitationsManage = Annotated[OrgPage, Depends(PageRequires(Permission.invitations_manage))]
PageMembersManage = Annotated[OrgPage, Depends(PageRequires(Permission.members_manage))]
PageMembersView = Annotated[OrgPage, Depends(PageRequires(Permission.members_view))]
PageOrgLeave = Annotated[OrgPage, Depends(PageRequires(Permission.org_leave))]
PageOverviewView = Annotated[OrgPage, Depends(PageRequires(Permission.overview_view))]

CHART_USERS = 20
MEMBERS_PER_PAGE = 200


# ------------------------------------------------------------------ dashboard


def _dashboard(
    request: Request, page: OrgPage, *, status_code: int = 200, error: str | None = None
) -> Response:
    page.require(Permission.overview_view)
    overview = usage_views.overview(page.session, page.org)
    chart = None
    usage = None
    if page.can(Permission.usage_view):  # the same permission as GET /usage
        usage = usage_views.usage(page.session, page.org)
        bars = [Bar(u.name or str(u.user_id)[:8], u.compute_seconds) for u in usage.users]
        chart = bar_chart(
            bars[:CHART_USERS], title="Compute time per user, last 30 days", show=fmt.duration
        )
    mine = None
    if page.can(Permission.usage_view_own):  # the same permission as GET /usage/me
        start, end = usage_views.window(None, None)
        mine = own_usage(page.session, page.ctx, start, end)
    return render(
        request,
        "dashboard.html",
        page=page,
        active="dashboard",
        status_code=status_code,
        overview=overview,
        my_usage=mine,
        usage=usage,
        chart=chart,
        chart_users=CHART_USERS,
        scaling=capacity.list_views(page.session, page.ctx),
        scaling_events=capacity.recent_events(page.session, page.org.id, limit=10),
        error=error,
    )


@router.get("/orgs/{org}")
def dashboard(request: Request, page: PageOverviewView) -> Response:
    return _dashboard(request, page)


@router.post("/orgs/{org}/leave")
def leave(
    request: Request,
    page: PageOrgLeave,
    confirm: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    if confirm != "yes":
        return _dashboard(
            request, page, status_code=422, error="Tick the box to confirm that you want to leave."
        )
    try:
        organizations.leave(page.ctx, page.session)
    except DomainError as exc:
        return _dashboard(request, page, status_code=status_for(exc), error=exc.detail)
    return redirect("/", notice="left")


# ------------------------------------------------------------------ members


def _roles_for(page: OrgPage, current: Role) -> list[Role]:
    """Roles the viewer may move a member to (none: the control is not shown)."""
    if not page.can(Permission.members_manage):
        return []
    options = [r for r in (Role.admin, Role.member) if may_assign(page.role, current, r)]
    return options if any(r is not current for r in options) else []


def _invite_roles(page: OrgPage) -> list[Role]:
    if page.can(Permission.invitations_manage):
        return [r for r in (Role.member, Role.admin) if may_assign(page.role, None, r)]
    if who_may_invite(page.org) == "members":
        return [Role.member]
    return []


def _members(
    request: Request,
    page: OrgPage,
    *,
    offset: int = 0,
    status_code: int = 200,
    new_invitation: dict[str, Any] | None = None,
    invite_errors: dict[str, str] | None = None,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    page.require(Permission.members_view)
    rows, total = organizations.list_members(
        page.session, page.org, limit=MEMBERS_PER_PAGE, offset=offset
    )
    # Who has two-factor: for those who manage members (as the API's members list).
    enrolled = (
        two_factor.enrolled_among(page.session, (m.user_id for m in rows))
        if page.can(Permission.members_manage)
        else None
    )
    members = [
        {
            "row": m,
            "two_factor": None if enrolled is None else m.user_id in enrolled,
            "roles": _roles_for(page, Role(m.role)) if m.user_id != page.viewer.user.id else [],
            "removable": m.user_id != page.viewer.user.id
            and page.can(Permission.members_manage)
            and may_assign(page.role, Role(m.role), None),
        }
        for m in rows
    ]
    invite_roles = _invite_roles(page)
    pending: list[Any] = []
    if page.can(Permission.members_manage):
        pending, _ = join_requests.list_for_org(page.ctx, page.session, limit=100, offset=0)
    invites: list[Any] = []
    if invite_roles or page.can(Permission.invitations_manage):
        found, _ = invitations.list_for(page.ctx, page.session, limit=100, offset=0)
        invites = [{"inv": i, "state": invitations.state_of(i).value} for i in found]
    return render(
        request,
        "members.html",
        page=page,
        active="members",
        status_code=status_code,
        members=members,
        total=total,
        offset=offset,
        per_page=MEMBERS_PER_PAGE,
        invite_roles=invite_roles,
        join_requests=pending,
        default_expiry=settings_doc.load(page.org.settings).invitations.default_expiry_hours,
        default_max_uses=settings_doc.load(page.org.settings).invitations.default_max_uses,
        invitations=invites,
        new_invitation=new_invitation,
        invite_errors=invite_errors or {},
        error=error,
        form=form or {},
    )


@router.get("/orgs/{org}/members")
def members(request: Request, page: PageMembersView, offset: int = 0) -> Response:
    return _members(request, page, offset=max(0, min(offset, 10_000_000)))


def _optional_int(text: str, field: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise Invalid("Enter a whole number.", field=field) from None


@router.post("/orgs/{org}/invitations")
def create_invitation(
    request: Request,
    page: PageInvitationsCreateIfAllowed,
    role: Annotated[str, Form(max_length=16)] = "member",
    expires_in_hours: Annotated[str, Form(max_length=12)] = "",
    max_uses: Annotated[str, Form(max_length=12)] = "",
) -> Response:
    form = {"role": role, "expires_in_hours": expires_in_hours, "max_uses": max_uses}
    try:
        if role not in Role.__members__:
            raise Invalid("Pick a role.", field="role")
        issued = invitations.create(
            page.ctx,
            page.session,
            role=Role(role),
            expires_in_hours=_optional_int(expires_in_hours, "expires_in_hours"),
            max_uses=_optional_int(max_uses, "max_uses"),
        )
    except Invalid as exc:
        return _members(
            request,
            page,
            status_code=422,
            invite_errors={exc.field or "role": exc.detail},
            form=form,
        )
    # The code is shown once, in this response only (never in a URL or a redirect).
    return _members(
        request,
        page,
        status_code=201,
        new_invitation={
            "code": issued.code,
            "link": invitation_link(settings_of(request), issued.code),
            "record": issued.record,
        },
    )


InvitationId = Annotated[uuid.UUID, PathParam()]
UserId = Annotated[uuid.UUID, PathParam()]


@router.post("/orgs/{org}/invitations/{invitation_id}/revoke")
def revoke_invitation(page: PageInvitationsManage, invitation_id: InvitationId) -> Response:
    invitations.revoke(page.ctx, page.session, invitation_id)
    return redirect(page.url("/members"), notice="revoked")


@router.post("/orgs/{org}/members/{user_id}/role")
def change_role(
    request: Request,
    page: PageMembersManage,
    user_id: UserId,
    role: Annotated[str, Form(max_length=16)],
) -> Response:
    if role not in Role.__members__:
        return _members(request, page, status_code=422, error="Pick a role.")
    organizations.change_role(page.ctx, page.session, user_id=user_id, role=Role(role))
    return redirect(page.url("/members"), notice="role")


@router.post("/orgs/{org}/members/{user_id}/remove")
def remove_member(
    page: PageMembersManage,
    user_id: UserId,
    no_rejoin: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    organizations.remove_member(
        page.ctx, page.session, user_id=user_id, no_rejoin=no_rejoin == "yes"
    )
    return redirect(page.url("/members"), notice="removed")
