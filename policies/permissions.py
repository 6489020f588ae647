"""Roles and what each may do: one enum, one table, one message per denial.

owner > admin > member. Routes never compare role names; they ask `allows(role, perm)`
through the API's single permission dependency.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    owner = "owner"
    admin = "admin"
    member = "member"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Role.member: 1, Role.admin: 2, Role.owner: 3}


class Permission(StrEnum):
    # organization
    org_view = "org:view"
    org_update = "org:update"
    org_delete = "org:delete"
    org_transfer = "org:transfer"
    org_leave = "org:leave"
    settings_view = "settings:view"
    settings_update = "settings:update"
    overview_view = "overview:view"
    usage_view = "usage:view"
    usage_view_own = "usage:view-own"
    audit_view = "audit:view"
    # members and invitations
    members_view = "members:view"
    members_manage = "members:manage"
    admins_manage = "admins:manage"
    invitations_manage = "invitations:manage"
    invitations_create_if_allowed = "invitations:create-if-allowed"
    # machines
    machines_view = "machines:view"
    machines_register = "machines:register"
    machines_manage_own = "machines:manage-own"
    machines_manage_all = "machines:manage-all"
    machines_approve = "machines:approve"
    # deployments, jobs, schedules
    deployments_view = "deployments:view"
    deployments_register = "deployments:register"
    deployments_manage_all = "deployments:manage-all"
    projects_create = "projects:create"
    projects_manage_all = "projects:manage-all"
    # every project whatever its visibility (members see org-wide ones, their teams' and
    # their own: policies.visibility)
    projects_view_all = "projects:view-all"
    # teams: members see the teams they are in; admins see and manage all of them
    teams_view = "teams:view"
    teams_manage = "teams:manage"
    jobs_submit = "jobs:submit"
    jobs_view_own = "jobs:view-own"
    jobs_view_all = "jobs:view-all"
    jobs_cancel_own = "jobs:cancel-own"
    jobs_cancel_all = "jobs:cancel-all"
    jobs_tag_own = "jobs:tag-own"
    jobs_tag_all = "jobs:tag-all"
    schedules_manage_own = "schedules:manage-own"
    schedules_manage_all = "schedules:manage-all"
    # datasets
    datasets_read = "datasets:read"
    datasets_create = "datasets:create"
    datasets_manage_all = "datasets:manage-all"
    storage_configure = "storage:configure"
    # org secrets (write-only: nobody reads a value back through the API)
    secrets_manage = "secrets:manage"
    # private Docker registries (their passwords are org secrets)
    registries_manage = "registries:manage"


_MEMBER: frozenset[Permission] = frozenset(
    {
        Permission.org_view,
        Permission.org_leave,
        Permission.settings_view,
        Permission.overview_view,
        Permission.usage_view_own,
        Permission.members_view,
        Permission.invitations_create_if_allowed,
        Permission.machines_view,
        Permission.machines_register,
        Permission.machines_manage_own,
        Permission.deployments_view,
        Permission.deployments_register,
        Permission.projects_create,
        Permission.teams_view,
        Permission.jobs_submit,
        Permission.jobs_view_own,
        Permission.jobs_cancel_own,
        Permission.jobs_tag_own,
        Permission.schedules_manage_own,
        Permission.datasets_read,
        Permission.datasets_create,
    }
)
_ADMIN: frozenset[Permission] = _MEMBER | {
    Permission.org_update,
    Permission.settings_update,
    Permission.usage_view,
    Permission.audit_view,
    Permission.members_manage,
    Permission.invitations_manage,
    Permission.machines_manage_all,
    Permission.machines_approve,
    Permission.deployments_manage_all,
    Permission.projects_manage_all,
    Permission.projects_view_all,
    Permission.teams_manage,
    Permission.jobs_view_all,
    Permission.jobs_cancel_all,
    Permission.jobs_tag_all,
    Permission.schedules_manage_all,
    Permission.datasets_manage_all,
    Permission.storage_configure,
    Permission.secrets_manage,
    Permission.registries_manage,
}
_OWNER: frozenset[Permission] = _ADMIN | {
    Permission.org_delete,
    Permission.org_transfer,
    Permission.admins_manage,
}

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.member: _MEMBER,
    Role.admin: _ADMIN,
    Role.owner: _OWNER,
}

_DENIAL: dict[Permission, str] = {
    Permission.org_update: "Only admins and owners may change the organization.",
    Permission.org_delete: "Only the owner may delete the organization.",
    Permission.org_transfer: "Only the owner may transfer ownership.",
    Permission.settings_update: "Only admins and owners may change settings and limits.",
    Permission.usage_view: "Only admins and owners may view per-user usage.",
    Permission.audit_view: "Only admins and owners may read the audit log.",
    Permission.members_manage: "Only admins and owners may manage members.",
    Permission.admins_manage: "Only the owner may grant, change or remove the admin role.",
    Permission.invitations_manage: "Only admins and owners may manage invitations.",
    Permission.machines_manage_all: "Only admins and owners may manage other members' machines.",
    Permission.machines_approve: "Only admins and owners may approve or reject machines.",
    Permission.deployments_manage_all: "Only admins may change other members' deployments.",
    Permission.projects_manage_all: "Only the project's creator or an admin may change it.",
    Permission.projects_view_all: "Only admins and owners see every project.",
    Permission.teams_manage: "Only admins and owners may manage teams.",
    Permission.jobs_view_all: "Only admins and owners may view other members' jobs.",
    Permission.jobs_cancel_all: "Only admins and owners may cancel other members' jobs.",
    Permission.jobs_tag_all: "Only the job's submitter, admins and owners may change its tags.",
    Permission.schedules_manage_all: "Only admins and owners may change other members' schedules.",
    Permission.datasets_manage_all: "Only the dataset's creator or an admin may change it.",
    Permission.storage_configure: "Only admins and owners may configure the data store.",
    Permission.secrets_manage: "Only admins and owners may manage the organization's secrets.",
    Permission.registries_manage: (
        "Only admins and owners may manage the organization's registries."
    ),
}


def allows(role: Role, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]


def denial(permission: Permission) -> str:
    """The sentence shown to a member whose role lacks `permission`."""
    return _DENIAL.get(permission, f"Your role may not do this ({permission.value}).")


def may_assign(actor: Role, target_current: Role | None, target_new: Role | None) -> bool:
    """Can `actor` move someone from `target_current` to `target_new` (None = not a member)?

    Admins manage members but never touch the owner nor hand out owner; only the owner
    manages admins. Ownership moves only through transfer.
    """
    if Role.owner in (target_current, target_new):
        return False
    if Role.admin in (target_current, target_new):
        return allows(actor, Permission.admins_manage)
    return allows(actor, Permission.members_manage)
