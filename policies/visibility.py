"""Who sees a project (and so its deployments, jobs and schedules): the only place that
says so.

A project is visible to the whole organization (`org`, the default), to the members of
chosen teams (`teams`), or only to its creator (`personal`). Its creator always sees it;
admins and owners (`projects:view-all`) see every project. Someone who cannot see a
project gets 404 for it and for everything in it, exactly like another organization's.

Pure over small snapshots, like `policies.access`: `project_view_scope` says how far a
viewer sees (the services turn it into one SQL WHERE clause per entity) and
`can_view_project` decides one row (the services' single-lookup guard).

`projects.allow_personal` (org setting, default true): when false, members may not
create personal projects nor deploy into or run jobs of one (`personal_refusal`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from policies.access import Scope, Viewer
from policies.permissions import Permission

__all__ = [
    "ALLOW_PERSONAL_SETTING",
    "ProjectFacts",
    "Visibility",
    "allow_personal",
    "can_view_project",
    "personal_refusal",
    "project_view_scope",
]

ALLOW_PERSONAL_SETTING: Final = "projects.allow_personal"


class Visibility(StrEnum):
    org = "org"
    teams = "teams"
    personal = "personal"


@dataclass(frozen=True, slots=True)
class ProjectFacts:
    """`in_team`: the viewer belongs to one of the project's teams (only asked for
    `teams` projects)."""

    org_id: uuid.UUID
    visibility: Visibility
    created_by: uuid.UUID | None
    in_team: bool = False


def project_view_scope(viewer: Viewer) -> Scope:
    """ALL: every project of the org. OWN: the ones `can_view_project` allows a member
    (org-wide, their teams', their own). A job token sees through its job only, which
    the job checks already made; it lists no projects."""
    if viewer.holds(Permission.projects_view_all):
        return Scope.ALL
    if viewer.holds(Permission.deployments_view):
        return Scope.OWN
    return Scope.NONE


def can_view_project(viewer: Viewer, project: ProjectFacts) -> bool:
    if project.org_id != viewer.org_id:
        return False
    scope = project_view_scope(viewer)
    if scope is Scope.ALL:
        return True
    if scope is Scope.NONE:
        return False
    if project.created_by is not None and project.created_by == viewer.user_id:
        return True
    if project.visibility is Visibility.org:
        return True
    return project.visibility is Visibility.teams and project.in_team


def allow_personal(settings: Mapping[str, Any]) -> bool:
    """The org's `projects.allow_personal` (default true)."""
    value = (settings.get("projects") or {}).get("allow_personal", True)
    return value is not False


def personal_refusal(viewer: Viewer, settings: Mapping[str, Any], what: str) -> str | None:
    """Why `viewer` may not `what` (e.g. "create personal projects") in a personal
    project, or None. Admins and owners are not stopped (they manage the setting)."""
    if allow_personal(settings) or viewer.holds(Permission.projects_view_all):
        return None
    return (
        f"This organization does not allow members to {what}: its setting "
        f"{ALLOW_PERSONAL_SETTING} is false. Use a project visible to the organization or "
        "to a team."
    )
