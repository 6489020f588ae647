"""Teams of an organization: /orgs/{org}/teams (admins manage; members see their own)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Requires, SessionDep
from api.schemas import PublicUserOut
from orgs import teams
from orgs.context import OrgContext
from orgs.models import Team
from policies.permissions import Permission

router = APIRouter(tags=["teams"])

TeamsView = Annotated[OrgContext, Depends(Requires(Permission.teams_view))]
TeamsManage = Annotated[OrgContext, Depends(Requires(Permission.teams_manage))]
TeamPath = Annotated[str, Path(max_length=64)]
UserPath = Annotated[str, Path(max_length=64, description="A member's user name or id.")]


class TeamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64, examples=["vision"])
    description: str = Field("", max_length=teams.MAX_DESCRIPTION)
    max_concurrent_jobs: int | None = Field(
        None, description="Active jobs of the team's members combined (null: no team limit)."
    )
    machine_types: list[str] | None = Field(
        None, description="Machine types the team's members may use (null: any)."
    )


class TeamPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=64, description="A new name.")
    description: str | None = Field(None, max_length=teams.MAX_DESCRIPTION)
    max_concurrent_jobs: int | None = Field(None, description="null removes the limit.")
    machine_types: list[str] | None = Field(None, description="null allows any type.")


class TeamMemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(max_length=64, description="A member's user name or user id.")


class TeamOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    max_concurrent_jobs: int | None
    machine_types: list[str] | None
    member_count: int
    created_at: datetime


class TeamDetail(TeamOut):
    members: list[PublicUserOut]


class TeamList(BaseModel):
    items: list[TeamOut]
    total: int


def _out(team: Team, member_count: int) -> TeamOut:
    return TeamOut(
        id=team.id,
        name=team.name,
        description=team.description,
        max_concurrent_jobs=team.max_concurrent_jobs,
        machine_types=team.machine_types,
        member_count=member_count,
        created_at=team.created_at,
    )


def _detail(session: SessionDep, team: Team) -> TeamDetail:
    members = teams.team_members(session, team)
    return TeamDetail(
        **_out(team, len(members)).model_dump(),
        members=[PublicUserOut(id=u.id, name=u.name) for u in members],
    )


@router.get("/orgs/{org}/teams")
def list_teams(ctx: TeamsView, session: SessionDep) -> TeamList:
    """Every team for admins and owners; the teams the caller is in for members."""
    items = [_out(t, n) for t, n in teams.list_teams(ctx, session)]
    return TeamList(items=items, total=len(items))


@router.post("/orgs/{org}/teams", status_code=status.HTTP_201_CREATED)
def create_team(body: TeamIn, ctx: TeamsManage, session: SessionDep) -> TeamDetail:
    team = teams.create_team(
        ctx,
        session,
        name=body.name,
        description=body.description,
        max_concurrent_jobs=body.max_concurrent_jobs,
        machine_types=body.machine_types,
    )
    return _detail(session, team)


@router.get("/orgs/{org}/teams/{team}")
def get_team(team: TeamPath, ctx: TeamsView, session: SessionDep) -> TeamDetail:
    """A team with its members (members: only a team they are in)."""
    return _detail(session, teams.get_team(ctx, session, team))


@router.patch("/orgs/{org}/teams/{team}")
def update_team(
    team: TeamPath, body: TeamPatch, ctx: TeamsManage, session: SessionDep
) -> TeamDetail:
    """Rename, describe, or change the team's limits (null removes a limit)."""
    changes: dict[str, Any] = body.model_dump(exclude_unset=True)
    kwargs: dict[str, Any] = {
        k: changes[k] for k in ("max_concurrent_jobs", "machine_types") if k in changes
    }
    updated = teams.update_team(
        ctx,
        session,
        team,
        new_name=changes.get("name"),
        description=changes.get("description"),
        **kwargs,
    )
    return _detail(session, updated)


@router.delete("/orgs/{org}/teams/{team}", status_code=status.HTTP_204_NO_CONTENT)
def delete_team(team: TeamPath, ctx: TeamsManage, session: SessionDep) -> None:
    teams.delete_team(ctx, session, team)


@router.post("/orgs/{org}/teams/{team}/members", status_code=status.HTTP_201_CREATED)
def add_member(
    team: TeamPath, body: TeamMemberIn, ctx: TeamsManage, session: SessionDep
) -> TeamDetail:
    """Add a member of the organization to the team (adding twice changes nothing)."""
    teams.add_member(ctx, session, team, body.user)
    return _detail(session, teams.get_team(ctx, session, team))


@router.delete("/orgs/{org}/teams/{team}/members/{user}", status_code=status.HTTP_204_NO_CONTENT)
def remove_member(team: TeamPath, user: UserPath, ctx: TeamsManage, session: SessionDep) -> None:
    teams.remove_member(ctx, session, team, user)
