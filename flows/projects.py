"""Projects: named groups of an organization's deployments, with an optional Git repository.

Every organization has a `default` project (migration 0019 made one for each existing
org; new orgs get it on first use), so deployments registered without a project, and
orgs that never heard of projects, keep working. Members create projects and manage
their own; admins manage all of them, and `default` (nobody's own) only they.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import delete, func, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flows import deployments
from flows.gateway import PrefectGateway
from flows.git_urls import MAX_GIT_URL, deploy_key_secret, token_secret, validate_git_url
from flows.models import Deployment, Project, ProjectTeam
from flows.visibility import can_see_project, project_teams, refuse_personal, visible_projects
from orgs import audit, teams
from orgs.context import OrgContext
from orgs.models import Organization
from orgs.secrets import OrgSecret
from policies.access import Viewer
from policies.errors import Conflict, Invalid, NotFound
from policies.names import refuse_bidi
from policies.permissions import Permission
from policies.visibility import Visibility

__all__ = [
    "DEFAULT_PROJECT",
    "MAX_GIT_URL",
    "create_project",
    "delete_project",
    "deploy_key_secret",
    "ensure_default",
    "get_project",
    "git_secret_names",
    "list_projects",
    "resolve_for_deployment",
    "token_secret",
    "update_project",
    "validate_git_url",
]

DEFAULT_PROJECT: Final = "default"
NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_DESCRIPTION: Final = 2000


def validate_name(name: str) -> str:
    refuse_bidi(name, field="name")
    if not NAME_RE.fullmatch(name):
        raise Invalid(
            "Project names are 1-63 lowercase letters, digits, '-' or '_', starting with a "
            "letter or digit.",
            field="name",
        )
    return name


def git_secret_names(project: Project) -> list[str]:
    return [deploy_key_secret(project), token_secret(project)]


def _validate_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION:
        raise Invalid(
            f"Descriptions may have at most {MAX_DESCRIPTION} characters.", field="description"
        )
    return description


def _snapshot(project: Project, team_names: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "name": project.name,
        "description": project.description,
        "git_url": project.git_url,
        "visibility": project.visibility,
        "teams": list(team_names),
    }


def _visibility(
    ctx: OrgContext, session: Session, visibility: str, team_names: Sequence[str] | None
) -> tuple[Visibility, list[uuid.UUID]]:
    """Checked visibility and the ids of its teams (422 naming what is wrong)."""
    try:
        chosen = Visibility(visibility)
    except ValueError:
        raise Invalid(
            f"visibility is one of: {', '.join(v.value for v in Visibility)}.",
            field="visibility",
        ) from None
    names = list(team_names or [])
    if chosen is Visibility.teams and not names:
        raise Invalid("A project visible to teams names at least one team.", field="teams")
    if chosen is not Visibility.teams and names:
        raise Invalid("Teams are given only with visibility 'teams'.", field="teams")
    if chosen is Visibility.personal:
        refuse_personal(
            ctx.viewer, ctx.org.settings or {}, chosen.value, "create personal projects"
        )
    return chosen, [t.id for t in teams.teams_by_name(session, ctx.org, names)]


def _set_teams(session: Session, project: Project, team_ids: Sequence[uuid.UUID]) -> None:
    session.execute(delete(ProjectTeam).where(ProjectTeam.project_id == project.id))
    for team_id in team_ids:
        session.add(ProjectTeam(project_id=project.id, team_id=team_id))


# ------------------------------------------------------------------------ reads


def list_projects(
    session: Session, org: Organization, *, viewer: Viewer | None
) -> list[tuple[Project, int]]:
    """The org's projects by name, each with its number of deployments: those `viewer`
    sees (None: all, for the system)."""
    counts = (
        select(Deployment.project_id, func.count().label("n"))
        .where(Deployment.org_id == org.id)
        .group_by(Deployment.project_id)
        .subquery()
    )
    rows = session.execute(
        select(Project, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.project_id == Project.id)
        .where(Project.org_id == org.id, visible_projects(viewer) if viewer else true())
        .order_by(Project.name)
    ).all()
    return [(project, int(n)) for project, n in rows]


def find_project(
    session: Session, org: Organization, name: str, *, viewer: Viewer | None
) -> Project | None:
    """The project `name` if `viewer` may see it (None: the system, sees all)."""
    project = session.scalars(
        select(Project).where(Project.org_id == org.id, Project.name == name)
    ).first()
    if project is not None and viewer is not None and not can_see_project(session, viewer, project):
        return None
    return project


def get_project(
    session: Session, org: Organization, name: str, *, viewer: Viewer | None
) -> Project:
    project = find_project(session, org, name, viewer=viewer)
    if project is None:
        raise NotFound(f"No project '{name}' in this organization.", code="project_not_found")
    return project


def project_deployments(session: Session, project: Project) -> list[Deployment]:
    return list(
        session.scalars(
            select(Deployment).where(Deployment.project_id == project.id).order_by(Deployment.name)
        )
    )


# ----------------------------------------------------------------------- writes


def ensure_default(session: Session, org: Organization) -> Project:
    """The org's `default` project, created (nobody's own) when it has none yet."""
    project = find_project(session, org, DEFAULT_PROJECT, viewer=None)
    if project is not None:
        return project
    try:
        with session.begin_nested():
            project = Project(
                org_id=org.id,
                name=DEFAULT_PROJECT,
                description="Deployments registered without a project.",
            )
            session.add(project)
    except IntegrityError:  # made by a concurrent request: use theirs
        return get_project(session, org, DEFAULT_PROJECT, viewer=None)
    return project


def resolve_for_deployment(
    ctx: OrgContext, session: Session, name: str | None, *, deployment: str
) -> Project:
    """The project the deployment `deployment` is registered into: `name` (one the
    caller sees); without one, the project it is already in, else the org's `default`.
    A personal project is refused where `projects.allow_personal` is false."""
    org = ctx.org
    project: Project | None
    if name is None:
        existing = deployments.find_deployment(session, org, deployment, viewer=ctx.viewer)
        project = existing.project if existing is not None else None
        if project is None:
            return ensure_default(session, org)
    elif name == DEFAULT_PROJECT:
        return ensure_default(session, org)
    else:
        project = find_project(session, org, name, viewer=ctx.viewer)
    if project is not None:
        refuse_personal(
            ctx.viewer, org.settings or {}, project.visibility, "deploy into personal projects"
        )
    if project is None:
        raise Invalid(
            f"No project '{name}' in this organization; create it with "
            f"`cshare project create {name}` first.",
            field="project",
            code="project_not_found",
        )
    return project


def create_project(
    ctx: OrgContext,
    session: Session,
    *,
    name: str,
    description: str = "",
    git_url: str | None = None,
    visibility: str = Visibility.org.value,
    team_names: Sequence[str] | None = None,
) -> Project:
    """A new project, visible to the org (default), to `team_names`, or to its creator
    only (`personal`; refused to members where `projects.allow_personal` is false)."""
    ctx.require(Permission.projects_create)
    validate_name(name)
    _validate_description(description)
    git_url = validate_git_url(git_url) if git_url else None
    chosen, team_ids = _visibility(ctx, session, visibility, team_names)
    if name == DEFAULT_PROJECT and chosen is not Visibility.org:
        raise Invalid(
            "The 'default' project is visible to the whole organization.", field="visibility"
        )
    # Names are unique in the org, seen or not: a clash says so (as GitHub's repos do).
    if find_project(session, ctx.org, name, viewer=None) is not None:
        raise Conflict(f"A project '{name}' already exists.", code="project_exists")
    project = Project(
        org_id=ctx.org.id,
        name=name,
        description=description,
        git_url=git_url,
        visibility=chosen.value,
        # `default` is shared: whoever names it first does not get to own it.
        created_by=None if name == DEFAULT_PROJECT else ctx.user.id,
    )
    session.add(project)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"A project '{name}' already exists.", code="project_exists") from None
    _set_teams(session, project, team_ids)
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="project.created",
        target_type="project",
        target_id=project.id,
        after=_snapshot(project, list(team_names or [])),
    )
    session.commit()
    return project


_UNSET: Final[Any] = object()


def update_project(
    ctx: OrgContext,
    session: Session,
    name: str,
    *,
    description: str | None = None,
    git_url: str | None = _UNSET,
    visibility: str | None = None,
    team_names: Sequence[str] | None = None,
) -> Project:
    """Change the description, Git URL (`git_url=None` removes it) and/or visibility
    (`team_names` alone changes the teams of a `teams` project)."""
    project = get_project(session, ctx.org, name, viewer=ctx.viewer)
    ctx.require_own_or(project.created_by, Permission.projects_manage_all)
    before = _snapshot(project, project_teams(session, project))
    if description is not None:
        project.description = _validate_description(description)
    if git_url is not _UNSET:
        project.git_url = validate_git_url(git_url) if git_url else None
    if visibility is not None or team_names is not None:
        chosen, team_ids = _visibility(ctx, session, visibility or project.visibility, team_names)
        if project.name == DEFAULT_PROJECT and chosen is not Visibility.org:
            raise Invalid(
                "The 'default' project is visible to the whole organization.",
                field="visibility",
            )
        project.visibility = chosen.value
        _set_teams(session, project, team_ids)
        session.flush()
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="project.updated",
        target_type="project",
        target_id=project.id,
        before=before,
        after=_snapshot(project, project_teams(session, project)),
    )
    session.commit()
    return project


def delete_project(
    ctx: OrgContext, session: Session, gateway: PrefectGateway, name: str
) -> list[str]:
    """Delete a project with its deployments; returns their names.

    Everything is checked before anything is deleted: the caller may delete each
    deployment, and none has active jobs (409 naming them). Each deployment then goes
    through `deployments.delete_deployment` (held jobs cancelled, schedules and the
    Prefect deployment removed), which checks again for a job started meanwhile.
    """
    project = get_project(session, ctx.org, name, viewer=ctx.viewer)
    ctx.require_own_or(project.created_by, Permission.projects_manage_all)
    deps = project_deployments(session, project)
    for dep in deps:
        ctx.require_own_or(dep.created_by, Permission.deployments_manage_all)
    busy = deployments.active_job_counts(session, [d.id for d in deps])
    if busy:
        listed = ", ".join(f"'{n}' ({c})" for n, c in sorted(busy.items()))
        raise Conflict(
            f"Project '{name}' has deployments with active jobs: {listed}; cancel them or "
            "let them finish first.",
            code="project_in_use",
        )
    names = [d.name for d in deps]
    project_id = project.id
    session.commit()
    for dep_name in names:
        deployments.delete_deployment(ctx, session, gateway, dep_name)

    project = get_project(session, ctx.org, name, viewer=None)
    left = project_deployments(session, project)
    if left:  # registered into it while we deleted: keep the project for them
        raise Conflict(
            f"Deployments were added to project '{name}' meanwhile "
            f"({', '.join(d.name for d in left)}); try again.",
            code="project_in_use",
        )
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="project.deleted",
        target_type="project",
        target_id=project_id,
        before={**_snapshot(project), "deployments_deleted": names},
    )
    # Its Git credentials go with it (nothing else may use them).
    session.execute(
        delete(OrgSecret).where(
            OrgSecret.org_id == project.org_id, OrgSecret.name.in_(git_secret_names(project))
        )
    )
    session.delete(project)
    session.commit()
    return names
