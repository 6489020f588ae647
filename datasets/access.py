"""Who may read and write a dataset, and the job-scoped caller.

Reading: visibility `org` lets every member read; `restricted` only the listed members,
the creator and admins (`datasets:manage-all`). A dataset a member may not read does not
exist for them (404), exactly like another organization's. Writing (new versions,
access, delete): the creator and admins.

A flow running on a machine acts through a **job token** (`flows.job_tokens`): a bearer
token scoped to one job: it reads the job's pinned inputs and writes its outputs, with
the job user's current rights on top (so access is checked again at the moment the data
is fetched on the machine, not only at submission), and nothing else. The catalog sees
that job as a `JobScope`; it never reads the jobs table itself (flows sits above
datasets).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, exists, or_, select
from sqlalchemy.orm import Session

from datasets.models import VISIBILITY_ORG, Dataset, DatasetAccess, DatasetTeamAccess
from orgs.context import OrgContext
from orgs.models import Organization, TeamMember, User
from orgs.scopes import scope_clause
from policies import access
from policies.access import CredentialRule, DatasetFacts, Viewer
from policies.errors import NotFound


@dataclass(frozen=True, slots=True)
class JobScope:
    """The job a job token acts for, as the catalog needs it (built from the job row by
    `flows.job_tokens`)."""

    id: uuid.UUID
    # The dataset version ids pinned at submission (`Job.inputs`); those recorded since in
    # `job_inputs` count too (see `catalog.plan_download`).
    pinned: frozenset[str] = frozenset()
    # The dataset names the job declared as its outputs; None: it declared none, so it
    # may write any dataset its user may write.
    outputs: frozenset[str] | None = None
    # The project of the job's deployment: its outputs go to that project's store.
    project_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """The member acting, and the job when they act through a job token."""

    ctx: OrgContext
    job: JobScope | None = None

    @property
    def user(self) -> User:
        return self.ctx.user

    @property
    def org(self) -> Organization:
        return self.ctx.org

    @property
    def viewer(self) -> Viewer:
        """The member's snapshot; a job token narrows the jobs it sees to its own."""
        viewer = self.ctx.viewer
        if self.job is None:
            return viewer
        return Viewer(viewer.user_id, viewer.org_id, viewer.role, job_id=self.job.id)


def facts(dataset: Dataset, *, granted: bool = False) -> DatasetFacts:
    return DatasetFacts(
        org_id=dataset.org_id,
        created_by=dataset.created_by,
        open_to_org=dataset.visibility == VISIBILITY_ORG,
        granted=granted,
    )


def can_read(session: Session, ctx: OrgContext, dataset: Dataset) -> bool:
    """`policies.access.can_read_dataset`, reading the access list only when it matters
    (a grant only ever adds access, so a yes without it is final)."""
    viewer = ctx.viewer
    if access.can_read_dataset(viewer, facts(dataset)):
        return True
    if not access.can_read_dataset(viewer, facts(dataset, granted=True)):
        return False
    if session.get(DatasetAccess, {"dataset_id": dataset.id, "user_id": viewer.user_id}):
        return True
    return bool(session.scalar(select(_team_granted(viewer.user_id, dataset.id))))


def _team_granted(user_id: uuid.UUID, dataset_id: Any) -> ColumnElement[bool]:
    """One of the user's teams is on the dataset's access list."""
    return exists().where(
        DatasetTeamAccess.dataset_id == dataset_id,
        TeamMember.team_id == DatasetTeamAccess.team_id,
        TeamMember.user_id == user_id,
    )


def readable_clause(ctx: OrgContext) -> ColumnElement[bool]:
    """`policies.access.dataset_read_scope` as SQL: the one WHERE clause of dataset lists
    (OWN spelled out as `can_read_dataset` says for members)."""
    viewer = ctx.viewer
    granted = exists().where(
        DatasetAccess.dataset_id == Dataset.id, DatasetAccess.user_id == viewer.user_id
    )
    return scope_clause(
        access.dataset_read_scope(viewer),
        Dataset.org_id,
        viewer.org_id,
        or_(
            Dataset.visibility == VISIBILITY_ORG,
            Dataset.created_by == viewer.user_id,
            granted,
            _team_granted(viewer.user_id, Dataset.id),
        ),
    )


def can_write(ctx: OrgContext, dataset: Dataset) -> bool:
    """For datasets the caller can read (found through `can_read`): creator or admin."""
    return access.can_write_dataset(ctx.viewer, facts(dataset, granted=True))


def require_write(ctx: OrgContext, dataset: Dataset) -> None:
    """Creator or admin; everyone else who can see the dataset gets 403."""
    access.require(
        can_write(ctx, dataset), access.write_dataset_permission(ctx.viewer, facts(dataset))
    )


def can_read_input_version(
    caller: Caller, version_id: uuid.UUID, pinned: frozenset[uuid.UUID]
) -> bool:
    """`policies.access.can_read_input_version`: a job token reads only `pinned`, its
    job's input versions; members any version of a dataset they can read."""
    return access.can_read_input_version(caller.viewer, version_id, pinned)


def require_output(caller: Caller, name: str) -> None:
    """Creating or uploading to dataset `name`: a job token only writes the outputs its
    job declared (403 `job_output_undeclared`); members are not limited here."""
    declared = caller.job.outputs if caller.job is not None else None
    access.require_rule(
        access.can_write_output(caller.viewer, name, declared),
        CredentialRule.job_output_undeclared,
    )


def dataset_not_found(name: str) -> NotFound:
    return NotFound(f"No dataset '{name}' in this organization.", code="dataset_not_found")
