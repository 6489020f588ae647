"""The teams page: admins and owners create and delete teams and choose their members;
members see the teams they are in (the same rules as /api/v1/orgs/{org}/teams)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from api.web.core import OrgPage, PageRequires, redirect, render
from orgs import organizations, teams
from policies.errors import DomainError, Invalid
from policies.permissions import Permission

router = APIRouter()

PageTeamsView = Annotated[OrgPage, Depends(PageRequires(Permission.teams_view))]
PageTeamsManage = Annotated[OrgPage, Depends(PageRequires(Permission.teams_manage))]


def _page(
    request: Request,
    page: OrgPage,
    *,
    code: int = 200,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    rows = [
        (team, teams.team_members(page.session, team))
        for team, _n in teams.list_teams(page.ctx, page.session)
    ]
    manage = page.can(Permission.teams_manage)
    members = (
        [
            m.name
            for m in organizations.list_members(page.session, page.org, limit=1000, offset=0)[0]
        ]
        if manage
        else []
    )
    return render(
        request,
        "teams.html",
        page=page,
        active="teams",
        status_code=code,
        rows=rows,
        manage=manage,
        members=members,
        errors=errors or {},
        form=form or {},
    )


@router.get("/orgs/{org}/teams")
def teams_page(request: Request, page: PageTeamsView) -> Response:
    return _page(request, page)


@router.post("/orgs/{org}/teams")
def create_team(
    request: Request,
    page: PageTeamsManage,
    name: Annotated[str, Form(max_length=64)] = "",
    description: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    form = {"name": name, "description": description}
    try:
        teams.create_team(page.ctx, page.session, name=name.strip(), description=description)
    except DomainError as exc:
        page.session.rollback()
        field = exc.field if isinstance(exc, Invalid) and exc.field else "name"
        return _page(request, page, code=422, errors={field: exc.detail}, form=form)
    return redirect(page.url("/teams"), notice="team_created")


@router.post("/orgs/{org}/teams/{team}/members")
def add_member(
    request: Request,
    page: PageTeamsManage,
    team: str,
    user: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    try:
        teams.add_member(page.ctx, page.session, team, user.strip())
    except Invalid as exc:
        page.session.rollback()
        return _page(request, page, code=422, errors={f"add-{team}": exc.detail})
    return redirect(page.url("/teams"), notice="team_member_added")


@router.post("/orgs/{org}/teams/{team}/members/remove")
def remove_member(
    request: Request,
    page: PageTeamsManage,
    team: str,
    user: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    teams.remove_member(page.ctx, page.session, team, user)
    return redirect(page.url("/teams"), notice="team_member_removed")


@router.post("/orgs/{org}/teams/{team}/delete")
def delete_team(page: PageTeamsManage, team: str) -> Response:
    teams.delete_team(page.ctx, page.session, team)
    return redirect(page.url("/teams"), notice="team_deleted")
