"""Projects: named groups of an organization's deployments, with an optional Git repository.

Every organization has a `default` project (migration 0019 made one for each existing
org; new orgs get it on first use), so deployments registered without a project, and
orgs that never heard of projects, keep working. Members create projects and manage
their own; admins manage all of them, and `default` (nobody's own) only they.
"""

from __future__ import annotations

import re
from typing import Any, Final

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flows import deployments
from flows.gateway import PrefectGateway
from flows.git_urls import MAX_GIT_URL, deploy_key_secret, token_secret, validate_git_url
from flows.models import Deployment, Project
from orgs import audit
from orgs.context import OrgContext
from orgs.models import Organization
from orgs.secrets import OrgSecret
from policies.errors import Conflict, Invalid, NotFound
from policies.names import refuse_bidi
from policies.permissions import Permission

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


def _snapshot(project: Project) -> dict[str, Any]:
    return {"name": project.name, "description": project.description, "git_url": project.git_url}


# ------------------------------------------------------------------------ reads


def list_projects(session: Session, org: Organization) -> list[tuple[Project, int]]:
    """The org's projects by name, each with its number of deployments."""
    counts = (
        select(Deployment.project_id, func.count().label("n"))
        .where(Deployment.org_id == org.id)
        .group_by(Deployment.project_id)
        .subquery()
    )
    rows = session.execute(
        select(Project, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.project_id == Project.id)
        .where(Project.org_id == org.id)
        .order_by(Project.name)
    ).all()
    return [(project, int(n)) for project, n in rows]


def find_project(session: Session, org: Organization, name: str) -> Project | None:
    return session.scalars(
        select(Project).where(Project.org_id == org.id, Project.name == name)
    ).first()


def get_project(session: Session, org: Organization, name: str) -> Project:
    project = find_project(session, org, name)
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
    project = find_project(session, org, DEFAULT_PROJECT)
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
        return get_project(session, org, DEFAULT_PROJECT)
    return project


def resolve_for_deployment(
    session: Session, org: Organization, name: str | None, *, deployment: str
) -> Project:
    """The project the deployment `deployment` is registered into: `name`; without one,
    the project it is already in, else the org's `default`."""
    if name is None:
        existing = deployments.find_deployment(session, org, deployment)
        if existing is not None and existing.project is not None:
            return existing.project
        return ensure_default(session, org)
    if name == DEFAULT_PROJECT:
        return ensure_default(session, org)
    project = find_project(session, org, name)
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
) -> Project:
    ctx.require(Permission.projects_create)
    validate_name(name)
    _validate_description(description)
    git_url = validate_git_url(git_url) if git_url else None
    if find_project(session, ctx.org, name) is not None:
        raise Conflict(f"A project '{name}' already exists.", code="project_exists")
    project = Project(
        org_id=ctx.org.id,
        name=name,
        description=description,
        git_url=git_url,
        # `default` is shared: whoever names it first does not get to own it.
        created_by=None if name == DEFAULT_PROJECT else ctx.user.id,
    )
    session.add(project)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"A project '{name}' already exists.", code="project_exists") from None
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="project.created",
        target_type="project",
        target_id=project.id,
        after=_snapshot(project),
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
) -> Project:
    """Change the description and/or Git URL (`git_url=None` removes it)."""
    project = get_project(session, ctx.org, name)
    ctx.require_own_or(project.created_by, Permission.projects_manage_all)
    before = _snapshot(project)
    if description is not None:
        project.description = _validate_description(description)
    if git_url is not _UNSET:
        project.git_url = validate_git_url(git_url) if git_url else None
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="project.updated",
        target_type="project",
        target_id=project.id,
        before=before,
        after=_snapshot(project),
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
    project = get_project(session, ctx.org, name)
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

    project = get_project(session, ctx.org, name)
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
