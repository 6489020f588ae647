"""Who may see or act on one job, machine or dataset: the only place that says so.

Pure functions over small frozen snapshots (no database, no network). The services turn
their rows into `JobFacts` / `MachineFacts` / `DatasetFacts` and the caller into a
`Viewer`, then ask here. Lists are filtered in SQL: `*_scope` returns how far the viewer
sees (`Scope`), and each service translates a scope into a WHERE clause in one helper
per entity, so a list never shows a row that the predicate would hide.

Outcomes the callers turn into errors:
- not visible (`can_view_*` / `can_read_dataset` is False) -> 404, the row does not
  exist for this viewer, exactly like another organization's;
- visible but not allowed -> 403 with `denial(permission)`, where `permission` is the
  one the `*_permission` function names (e.g. `jobs:cancel-all` for someone else's job);
- a job token outside its job, or a member writing lineage -> 403 with
  `rule_denial(rule)` and the `CredentialRule` as the error code (`require_rule`).

The rights themselves come from `policies.permissions` (role -> permissions); this
module only adds ownership: "-own" permissions cover the viewer's own rows, "-all"
permissions everyone's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from policies.errors import Forbidden
from policies.permissions import Permission, Role, allows, denial

__all__ = [
    "CredentialRule",
    "DatasetFacts",
    "JobFacts",
    "JobTokenUse",
    "MachineFacts",
    "Scope",
    "Viewer",
    "can_cancel_job",
    "can_manage_machine",
    "can_read_dataset",
    "can_read_input_version",
    "can_tag_job",
    "can_view_job",
    "can_view_machine",
    "can_write_dataset",
    "can_write_lineage",
    "can_write_output",
    "cancel_job_permission",
    "dataset_read_scope",
    "job_token_allows",
    "job_view_scope",
    "machine_view_scope",
    "manage_machine_permission",
    "require",
    "require_rule",
    "rule_denial",
    "tag_job_permission",
    "write_dataset_permission",
]


class Scope(StrEnum):
    """How much of a list the viewer sees: everyone's rows, their own, or none."""

    ALL = "all"
    OWN = "own"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Viewer:
    """Someone looking at one organization.

    `role` is None for a non-member. `job_id` is set when they act through a job token:
    the token sees that one job and no other, reads only its pinned inputs and writes
    only its outputs and record (the user's current role and access still apply on top).
    """

    user_id: uuid.UUID
    org_id: uuid.UUID
    role: Role | None
    job_id: uuid.UUID | None = None

    def holds(self, permission: Permission) -> bool:
        return self.role is not None and allows(self.role, permission)


class _JobRow(Protocol):
    @property
    def id(self) -> uuid.UUID: ...
    @property
    def org_id(self) -> uuid.UUID: ...
    @property
    def user_id(self) -> uuid.UUID: ...


class _MachineRow(Protocol):
    @property
    def org_id(self) -> uuid.UUID: ...
    @property
    def owner_id(self) -> uuid.UUID: ...


@dataclass(frozen=True, slots=True)
class JobFacts:
    id: uuid.UUID
    org_id: uuid.UUID
    user_id: uuid.UUID

    @classmethod
    def of(cls, job: _JobRow) -> JobFacts:
        """From a job row (or anything shaped like one)."""
        return cls(id=job.id, org_id=job.org_id, user_id=job.user_id)


@dataclass(frozen=True, slots=True)
class MachineFacts:
    org_id: uuid.UUID
    owner_id: uuid.UUID

    @classmethod
    def of(cls, machine: _MachineRow) -> MachineFacts:
        return cls(org_id=machine.org_id, owner_id=machine.owner_id)


@dataclass(frozen=True, slots=True)
class DatasetFacts:
    """`open_to_org`: visibility `org`. `granted`: the viewer is on its access list
    (callers may leave it False and ask again with True only when that could matter)."""

    org_id: uuid.UUID
    created_by: uuid.UUID | None
    open_to_org: bool
    granted: bool = False


def require(allowed: bool, permission: Permission) -> None:
    """403 with the policy's sentence for `permission` unless `allowed`."""
    if not allowed:
        raise Forbidden(denial(permission), code="forbidden")


def _scope(viewer: Viewer, own: Permission, every: Permission) -> Scope:
    if viewer.holds(every):
        return Scope.ALL
    if viewer.holds(own):
        return Scope.OWN
    return Scope.NONE


def _in_scope(scope: Scope, viewer: Viewer, owner_id: uuid.UUID | None) -> bool:
    return scope is Scope.ALL or (scope is Scope.OWN and owner_id == viewer.user_id)


def _own_or_all(
    viewer: Viewer, owner_id: uuid.UUID | None, own: Permission, every: Permission
) -> Permission:
    return own if owner_id == viewer.user_id else every


# ----------------------------------------------------------------------- jobs


def job_view_scope(viewer: Viewer) -> Scope:
    """Members see their own jobs, admins everyone's. A job token lists nothing."""
    if viewer.job_id is not None:
        return Scope.NONE
    return _scope(viewer, Permission.jobs_view_own, Permission.jobs_view_all)


def can_view_job(viewer: Viewer, job: JobFacts) -> bool:
    if job.org_id != viewer.org_id or viewer.role is None:
        return False
    if viewer.job_id is not None:
        return job.id == viewer.job_id
    return _in_scope(job_view_scope(viewer), viewer, job.user_id)


def cancel_job_permission(viewer: Viewer, job: JobFacts) -> Permission:
    return _own_or_all(viewer, job.user_id, Permission.jobs_cancel_own, Permission.jobs_cancel_all)


def can_cancel_job(viewer: Viewer, job: JobFacts) -> bool:
    """Your own jobs, or anyone's with `jobs:cancel-all`; only jobs you can see."""
    return can_view_job(viewer, job) and viewer.holds(cancel_job_permission(viewer, job))


def tag_job_permission(viewer: Viewer, job: JobFacts) -> Permission:
    return _own_or_all(viewer, job.user_id, Permission.jobs_tag_own, Permission.jobs_tag_all)


def can_tag_job(viewer: Viewer, job: JobFacts) -> bool:
    """Add or remove a job's tags: its submitter, or admins and owners; only jobs you can
    see (so another member's job stays a 404), never through a job token."""
    return (
        viewer.job_id is None
        and can_view_job(viewer, job)
        and viewer.holds(tag_job_permission(viewer, job))
    )


def can_write_lineage(viewer: Viewer, job: JobFacts) -> bool:
    """Attach outputs to a job, or write its metadata or run record: the job's own token
    only. Members never do, not even the job's user or an admin: lineage claims what
    the run read, ran and produced, and only the run knows that."""
    return job.org_id == viewer.org_id and viewer.role is not None and viewer.job_id == job.id


# ----------------------------------------------------------------------- machines


def machine_view_scope(viewer: Viewer) -> Scope:
    """Every member sees every machine of the organization (capacity is shared)."""
    return Scope.ALL if viewer.holds(Permission.machines_view) else Scope.NONE


def can_view_machine(viewer: Viewer, machine: MachineFacts) -> bool:
    if machine.org_id != viewer.org_id:
        return False
    return _in_scope(machine_view_scope(viewer), viewer, machine.owner_id)


def manage_machine_permission(viewer: Viewer, machine: MachineFacts) -> Permission:
    return _own_or_all(
        viewer, machine.owner_id, Permission.machines_manage_own, Permission.machines_manage_all
    )


def can_manage_machine(viewer: Viewer, machine: MachineFacts) -> bool:
    """Remove (and later: drain, rename) a machine: its owner, or an admin."""
    return can_view_machine(viewer, machine) and viewer.holds(
        manage_machine_permission(viewer, machine)
    )


# ----------------------------------------------------------------------- datasets


def dataset_read_scope(viewer: Viewer) -> Scope:
    """ALL: every dataset (`datasets:manage-all`). OWN: the ones `can_read_dataset`
    allows a member: open to the org, created by them, or on whose list they are."""
    return _scope(viewer, Permission.datasets_read, Permission.datasets_manage_all)


def can_read_dataset(viewer: Viewer, dataset: DatasetFacts) -> bool:
    if dataset.org_id != viewer.org_id:
        return False
    scope = dataset_read_scope(viewer)
    if scope is Scope.OWN:
        return dataset.open_to_org or dataset.granted or dataset.created_by == viewer.user_id
    return scope is Scope.ALL


def write_dataset_permission(viewer: Viewer, dataset: DatasetFacts) -> Permission:
    return _own_or_all(
        viewer, dataset.created_by, Permission.datasets_create, Permission.datasets_manage_all
    )


def can_write_dataset(viewer: Viewer, dataset: DatasetFacts) -> bool:
    """New versions, access lists, delete: the creator or an admin (being granted read
    access does not let anyone write)."""
    return can_read_dataset(viewer, dataset) and viewer.holds(
        write_dataset_permission(viewer, dataset)
    )


# ----------------------------------------------------------------------- job credentials


class JobTokenUse(StrEnum):
    """What a job token (`cs_j_...`) is for. A route opens itself to job tokens by naming
    one of these; every other route refuses them (`job_token_allows`)."""

    read_inputs = "read-inputs"  # its job's pinned input versions: list, download
    write_outputs = "write-outputs"  # create and upload the datasets it writes, as outputs
    write_record = "write-record"  # its own metadata and run record (code, machine, ...)
    read_code = "read-code"  # its job's code bundle (the agent fetches it before the run)
    registry_auth = "registry-auth"  # the registry login for its own container image


class CredentialRule(StrEnum):
    """Refusals about credentials and lineage; the value is the error code."""

    job_token_scope = "job_token_scope"  # noqa: S105  (an error code, not a secret)
    job_output_undeclared = "job_output_undeclared"
    lineage_job_only = "lineage_job_only"
    registry_auth_job_only = "registry_auth_job_only"


_RULE_SENTENCES: dict[CredentialRule, str] = {
    CredentialRule.job_token_scope: (
        "A job token only reads its job's inputs and code, writes its outputs and records "
        "its own metadata; use a member's token for anything else."
    ),
    CredentialRule.job_output_undeclared: (
        "This job writes only the outputs it declared at submission; this dataset is not "
        "one of them."
    ),
    CredentialRule.lineage_job_only: (
        "A job's lineage (its outputs, metadata and run record) is written only by the job "
        "itself, with its job token; members may not attach or change it."
    ),
    CredentialRule.registry_auth_job_only: (
        "A registry login is handed only to the machine running a container job, with that "
        "job's own token, for that job's image."
    ),
}


def rule_denial(rule: CredentialRule) -> str:
    return _RULE_SENTENCES[rule]


def require_rule(allowed: bool, rule: CredentialRule) -> None:
    """403 with the rule's sentence (and the rule as the error code) unless `allowed`."""
    if not allowed:
        raise Forbidden(rule_denial(rule), code=rule.value)


def job_token_allows(use: JobTokenUse | None) -> bool:
    """A job token may call a route only if the route names what for (refused by default)."""
    return use is not None


def can_read_input_version(
    viewer: Viewer, version_id: uuid.UUID, job_inputs: frozenset[uuid.UUID]
) -> bool:
    """On top of `can_read_dataset`: members read every version of a dataset they can
    read; a job token only the versions pinned as its job's inputs."""
    return viewer.job_id is None or version_id in job_inputs


def can_write_output(viewer: Viewer, dataset_name: str, declared: frozenset[str] | None) -> bool:
    """On top of the role and creator checks for creating or uploading: a job token
    writes only the outputs its job declared (any, when it declared none)."""
    return viewer.job_id is None or declared is None or dataset_name in declared
