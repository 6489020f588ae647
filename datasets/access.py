"""Who may read and write a dataset, and the job-scoped caller.

Reading: visibility `org` lets every member read; `restricted` only the listed members,
the creator and admins (`datasets:manage-all`). A dataset a member may not read does not
exist for them (404), exactly like another organization's. Writing (new versions,
access, delete): the creator and admins.

A flow running on a machine acts through a **job token** (`cs_j_...`): a bearer token
scoped to one job, acting as the job's user with that user's current rights, and only
for the job's own inputs, outputs and metadata. So access is checked again at the
moment the data is fetched on the machine, not only at submission.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ColumnElement, and_, exists, false, or_, select
from sqlalchemy.orm import Session

from datasets.models import VISIBILITY_ORG, Dataset, DatasetAccess, JobToken
from flows.models import Job
from orgs.context import OrgContext, member_context
from orgs.db import utcnow
from orgs.models import Organization, User
from orgs.security import hash_token
from policies import access
from policies.access import DatasetFacts, Scope, Viewer
from policies.errors import NotFound

JOB_TOKEN_PREFIX = "cs_j_"  # noqa: S105  (a prefix, not a secret)
# Beyond the job's own runtime limit, for materialising inputs and uploading outputs.
JOB_TOKEN_GRACE = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Caller:
    """The member acting, and the job when they act through a job token."""

    ctx: OrgContext
    job: Job | None = None

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
    return (
        session.get(DatasetAccess, {"dataset_id": dataset.id, "user_id": viewer.user_id})
        is not None
    )


def readable_clause(ctx: OrgContext) -> ColumnElement[bool]:
    """`policies.access.dataset_read_scope` as SQL: the one WHERE clause of dataset lists
    (OWN spelled out as `can_read_dataset` says for members)."""
    viewer = ctx.viewer
    scope = access.dataset_read_scope(viewer)
    in_org = Dataset.org_id == viewer.org_id
    if scope is Scope.ALL:
        return in_org
    if scope is Scope.NONE:
        return false()
    granted = exists().where(
        DatasetAccess.dataset_id == Dataset.id, DatasetAccess.user_id == viewer.user_id
    )
    return and_(
        in_org,
        or_(Dataset.visibility == VISIBILITY_ORG, Dataset.created_by == viewer.user_id, granted),
    )


def can_write(ctx: OrgContext, dataset: Dataset) -> bool:
    """For datasets the caller can read (found through `can_read`): creator or admin."""
    return access.can_write_dataset(ctx.viewer, facts(dataset, granted=True))


def require_write(ctx: OrgContext, dataset: Dataset) -> None:
    """Creator or admin; everyone else who can see the dataset gets 403."""
    access.require(
        can_write(ctx, dataset), access.write_dataset_permission(ctx.viewer, facts(dataset))
    )


def dataset_not_found(name: str) -> NotFound:
    return NotFound(f"No dataset '{name}' in this organization.", code="dataset_not_found")


# ----------------------------------------------------------------------- job tokens


def issue_job_token(session: Session, job: Job) -> str:
    """A fresh token for `job`'s flow (shown once; only its hash is stored).

    For the claim code: call it when the machine claims the job and pass the token to
    the flow run as `CSHARE_JOB_TOKEN`. It expires after the job's runtime limit plus
    `JOB_TOKEN_GRACE`; `revoke_job_tokens` ends it earlier (when the job finishes).
    """
    token = JOB_TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(
        JobToken(
            token_hash=hash_token(token),
            job_id=job.id,
            expires_at=utcnow() + timedelta(seconds=job.max_runtime_s) + JOB_TOKEN_GRACE,
        )
    )
    return token


def revoke_job_tokens(session: Session, job_id: uuid.UUID) -> None:
    for row in session.scalars(select(JobToken).where(JobToken.job_id == job_id)):
        session.delete(row)


def is_job_token(token: str) -> bool:
    return token.startswith(JOB_TOKEN_PREFIX)


def job_caller(session: Session, org_slug: str, token: str) -> Caller | None:
    """The caller behind a job token for organization `org_slug`, or None when the token
    is unknown or expired. 404 when the job belongs to another org or its user is no
    longer a member (a job cannot act for someone who left)."""
    row = session.get(JobToken, hash_token(token))
    if row is None or row.expires_at <= utcnow():
        return None
    job = session.get(Job, row.job_id)
    if job is None:
        return None
    user = session.get(User, job.user_id)
    org = session.scalars(select(Organization).where(Organization.slug == org_slug)).first()
    if user is None or org is None or org.id != job.org_id:
        raise NotFound(f"No organization '{org_slug}' for this job.", code="org_not_found")
    return Caller(ctx=member_context(session, org_slug, user), job=job)
