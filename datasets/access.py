"""Who may read and write a dataset, and the job-scoped caller.

Reading: visibility `org` lets every member read; `restricted` only the listed members,
the creator and admins (`datasets:manage-all`). A dataset a member may not read does not
exist for them (404), exactly like another organization's. Writing (new versions,
access, delete): the creator and admins.

A flow running on a machine acts through a **job token** (`flows.job_tokens`): a bearer
token scoped to one job, acting as the job's user with that user's current rights, and
only for the job's own inputs, outputs and metadata. So access is checked again at the
moment the data is fetched on the machine, not only at submission. The catalog sees that
job as a `JobScope`; it never reads the jobs table itself (flows sits above datasets).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, exists, or_, true
from sqlalchemy.orm import Session

from datasets.models import VISIBILITY_ORG, Dataset, DatasetAccess
from orgs.context import OrgContext
from orgs.models import Organization, User
from policies.errors import Forbidden, NotFound
from policies.permissions import Permission, denial


@dataclass(frozen=True, slots=True)
class JobScope:
    """The job a job token acts for, as the catalog needs it (built from the job row by
    `flows.job_tokens`)."""

    id: uuid.UUID
    # The dataset version ids pinned at submission (`Job.inputs`); those recorded since in
    # `job_inputs` count too (see `catalog.plan_download`).
    pinned: frozenset[str] = frozenset()


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


def is_admin(ctx: OrgContext) -> bool:
    return ctx.can(Permission.datasets_manage_all)


def can_read(session: Session, ctx: OrgContext, dataset: Dataset) -> bool:
    if dataset.org_id != ctx.org.id:
        return False
    if dataset.visibility == VISIBILITY_ORG or dataset.created_by == ctx.user.id or is_admin(ctx):
        return True
    return (
        session.get(DatasetAccess, {"dataset_id": dataset.id, "user_id": ctx.user.id}) is not None
    )


def readable_clause(ctx: OrgContext) -> ColumnElement[bool]:
    """The SQL condition `can_read` for listing (the org condition is added by callers)."""
    if is_admin(ctx):
        return true()
    granted = exists().where(
        DatasetAccess.dataset_id == Dataset.id, DatasetAccess.user_id == ctx.user.id
    )
    return or_(Dataset.visibility == VISIBILITY_ORG, Dataset.created_by == ctx.user.id, granted)


def require_write(ctx: OrgContext, dataset: Dataset) -> None:
    """Creator or admin; everyone else who can see the dataset gets 403."""
    if dataset.created_by != ctx.user.id and not is_admin(ctx):
        raise Forbidden(denial(Permission.datasets_manage_all), code="forbidden")


def dataset_not_found(name: str) -> NotFound:
    return NotFound(f"No dataset '{name}' in this organization.", code="dataset_not_found")
