"""Projects of an organization: /orgs/{org}/projects (groups of deployments)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, status
from pydantic import BaseModel, Field

from api.deps import Requires, SessionDep
from api.routers.deployments import DeploymentOut, GatewayDep, deployment_out
from flows import projects, visibility
from flows.models import Project
from orgs.context import OrgContext
from policies.permissions import Permission

router = APIRouter(tags=["projects"])

ProjectsView = Annotated[OrgContext, Depends(Requires(Permission.deployments_view))]
# Members create projects and manage their own; the domain asks for manage-all otherwise.
ProjectsManage = Annotated[OrgContext, Depends(Requires(Permission.projects_create))]
NamePath = Annotated[str, Path(max_length=64)]


class ProjectIn(BaseModel):
    name: str = Field(max_length=64, examples=["vision"])
    git_url: str | None = Field(
        None,
        max_length=projects.MAX_GIT_URL,
        description="https://host/path, ssh://host/path or git@host:path (not fetched yet).",
        examples=["git@github.com:team/vision.git"],
    )
    description: str = Field("", max_length=projects.MAX_DESCRIPTION)
    visibility: str = Field(
        "org",
        max_length=16,
        description="Who sees it (and its deployments, jobs, schedules): `org` (everyone), "
        "`teams` (members of `teams`), or `personal` (its creator). Admins see all.",
    )
    teams: list[str] | None = Field(None, max_length=100, description="With `teams`.")


class ProjectPatch(BaseModel):
    description: str | None = Field(None, max_length=projects.MAX_DESCRIPTION)
    git_url: str | None = Field(
        None, max_length=projects.MAX_GIT_URL, description="An empty string removes it."
    )
    visibility: str | None = Field(None, max_length=16, description="org, teams or personal.")
    teams: list[str] | None = Field(
        None, max_length=100, description="The teams of a `teams` project (replaces them)."
    )


class ProjectOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    git_url: str | None
    visibility: str
    teams: list[str]
    deployment_count: int
    created_by: uuid.UUID | None
    created_at: datetime


class ProjectDetail(ProjectOut):
    deployments: list[DeploymentOut]


class ProjectList(BaseModel):
    items: list[ProjectOut]
    total: int


def project_out(project: Project, deployment_count: int, teams: list[str]) -> ProjectOut:
    return ProjectOut(
        id=project.id,
        name=project.name,
        description=project.description,
        git_url=project.git_url,
        visibility=project.visibility,
        teams=teams,
        deployment_count=deployment_count,
        created_by=project.created_by,
        created_at=project.created_at,
    )


def _detail(ctx: OrgContext, session: SessionDep, project: Project) -> ProjectDetail:
    deps = projects.project_deployments(session, project)
    base = project_out(project, len(deps), visibility.project_teams(session, project))
    return ProjectDetail(
        **base.model_dump(), deployments=[deployment_out(d, ctx.org.slug) for d in deps]
    )


@router.get("/orgs/{org}/projects")
def list_projects(ctx: ProjectsView, session: SessionDep) -> ProjectList:
    rows = projects.list_projects(session, ctx.org, viewer=ctx.viewer)
    names = visibility.teams_of(session, [p.id for p, _ in rows])
    items = [project_out(p, n, names.get(p.id, [])) for p, n in rows]
    return ProjectList(items=items, total=len(items))


@router.post("/orgs/{org}/projects", status_code=status.HTTP_201_CREATED)
def create_project(body: ProjectIn, ctx: ProjectsManage, session: SessionDep) -> ProjectDetail:
    project = projects.create_project(
        ctx,
        session,
        name=body.name,
        description=body.description,
        git_url=body.git_url,
        visibility=body.visibility,
        team_names=body.teams,
    )
    return _detail(ctx, session, project)


@router.get("/orgs/{org}/projects/{name}")
def get_project(name: NamePath, ctx: ProjectsView, session: SessionDep) -> ProjectDetail:
    """A project with its deployments."""
    return _detail(ctx, session, projects.get_project(session, ctx.org, name, viewer=ctx.viewer))


@router.patch("/orgs/{org}/projects/{name}")
def update_project(
    name: NamePath, body: ProjectPatch, ctx: ProjectsManage, session: SessionDep
) -> ProjectDetail:
    """Change the description or Git URL (the project's creator, or an admin)."""
    changes = body.model_dump(exclude_unset=True)
    project = projects.update_project(
        ctx,
        session,
        name,
        description=changes.get("description"),
        visibility=changes.get("visibility"),
        team_names=changes.get("teams"),
        **({"git_url": changes["git_url"]} if "git_url" in changes else {}),
    )
    return _detail(ctx, session, project)


@router.delete("/orgs/{org}/projects/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_project(
    name: NamePath, ctx: ProjectsManage, session: SessionDep, gateway: GatewayDep
) -> None:
    """Delete a project and its deployments. Refused (409) while any of them has active
    jobs; the answer names them."""
    projects.delete_project(ctx, session, gateway, name)
