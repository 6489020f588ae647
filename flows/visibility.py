"""`policies.visibility` applied to rows: one SQL WHERE clause per entity for lists and
one guard per entity for single lookups (projects, deployments; jobs and schedules go
through their deployment). The services call only these, so what a member sees of a
project shared with other teams is decided in policies/ and translated here once.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, or_, select
from sqlalchemy.orm import Session

from flows.models import Deployment, Job, Project, ProjectTeam
from orgs.models import Team, TeamMember
from policies import access
from policies.access import JobFacts, Scope, Viewer
from policies.errors import Forbidden
from policies.visibility import (
    ProjectFacts,
    Visibility,
    can_view_project,
    personal_refusal,
    project_view_scope,
)

__all__ = [
    "can_see_deployment",
    "can_see_project",
    "project_teams",
    "refuse_personal",
    "teams_of",
    "visible_deployment_ids",
    "visible_deployments",
    "visible_job",
    "visible_projects",
]


def _in_team(user_id: uuid.UUID) -> ColumnElement[bool]:
    return exists().where(
        ProjectTeam.project_id == Project.id,
        TeamMember.team_id == ProjectTeam.team_id,
        TeamMember.user_id == user_id,
    )


def visible_projects(viewer: Viewer) -> ColumnElement[bool]:
    """`can_view_project` as SQL over `Project`."""
    scope = project_view_scope(viewer)
    if scope is Scope.ALL:
        return Project.org_id == viewer.org_id
    if scope is Scope.NONE:
        return false()
    return and_(
        Project.org_id == viewer.org_id,
        or_(
            Project.visibility == Visibility.org.value,
            Project.created_by == viewer.user_id,
            and_(Project.visibility == Visibility.teams.value, _in_team(viewer.user_id)),
        ),
    )


def visible_deployments(viewer: Viewer) -> ColumnElement[bool]:
    """Over `Deployment`: the org's deployments in projects the viewer sees (or in none)."""
    scope = project_view_scope(viewer)
    if scope is Scope.ALL:
        return Deployment.org_id == viewer.org_id
    if scope is Scope.NONE:
        return false()
    return and_(
        Deployment.org_id == viewer.org_id,
        or_(
            Deployment.project_id.is_(None),
            Deployment.project_id.in_(select(Project.id).where(visible_projects(viewer))),
        ),
    )


def visible_deployment_ids(viewer: Viewer) -> Any:
    """A subquery of the deployment ids `visible_deployments` allows (for jobs and
    schedules, which point at a deployment)."""
    return select(Deployment.id).where(visible_deployments(viewer))


def _facts(session: Session, viewer: Viewer, project: Project) -> ProjectFacts:
    visibility = Visibility(project.visibility)
    in_team = False
    if visibility is Visibility.teams and project_view_scope(viewer) is Scope.OWN:
        in_team = bool(
            session.scalar(
                select(
                    exists().where(
                        ProjectTeam.project_id == project.id,
                        TeamMember.team_id == ProjectTeam.team_id,
                        TeamMember.user_id == viewer.user_id,
                    )
                )
            )
        )
    return ProjectFacts(
        org_id=project.org_id,
        visibility=visibility,
        created_by=project.created_by,
        in_team=in_team,
    )


def can_see_project(session: Session, viewer: Viewer, project: Project) -> bool:
    return can_view_project(viewer, _facts(session, viewer, project))


def can_see_deployment(session: Session, viewer: Viewer, dep: Deployment) -> bool:
    if dep.org_id != viewer.org_id:
        return False
    project = dep.project if dep.project_id is not None else None
    return project is None or can_see_project(session, viewer, project)


def visible_job(session: Session, viewer: Viewer, job_id: uuid.UUID) -> Job | None:
    """The one guard of single job lookups (members' tokens and job tokens alike):
    `policies.access` (whose jobs) and `policies.visibility` (its deployment's project)."""
    job = session.get(Job, job_id)
    if job is None or not access.can_view_job(viewer, JobFacts.of(job)):
        return None
    dep = session.get(Deployment, job.deployment_id) if job.deployment_id else None
    if dep is not None and not can_see_deployment(session, viewer, dep):
        return None
    return job


def project_teams(session: Session, project: Project) -> list[str]:
    return list(
        session.scalars(
            select(Team.name)
            .join(ProjectTeam, ProjectTeam.team_id == Team.id)
            .where(ProjectTeam.project_id == project.id)
            .order_by(Team.name)
        )
    )


def teams_of(session: Session, project_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """Team names of each of `project_ids` (for listings, in one query)."""
    out: dict[uuid.UUID, list[str]] = {}
    if not project_ids:
        return out
    rows = session.execute(
        select(ProjectTeam.project_id, Team.name)
        .join(Team, Team.id == ProjectTeam.team_id)
        .where(ProjectTeam.project_id.in_(project_ids))
        .order_by(Team.name)
    ).all()
    for project_id, name in rows:
        out.setdefault(project_id, []).append(name)
    return out


def refuse_personal(
    viewer: Viewer, settings: dict[str, Any], visibility: str | None, what: str
) -> None:
    """403 `personal_projects_disabled` when `visibility` (a project's; None: no project)
    is personal and the org's `projects.allow_personal` is false for this viewer."""
    if visibility != Visibility.personal.value:
        return
    refused = personal_refusal(viewer, settings, what)
    if refused is not None:
        raise Forbidden(refused, code="personal_projects_disabled")
