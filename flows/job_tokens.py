"""Job tokens (`cs_j_...`): a bearer token scoped to one job, handed to its flow on the
machine. It acts as the job's user with that user's current rights, and only for the
job's own inputs, outputs and metadata (see `datasets.access`). Only the SHA-256 of the
secret is stored.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from datasets.access import Caller, JobScope
from datasets.models import JobToken
from flows.models import Job
from orgs.context import member_context
from orgs.db import utcnow
from orgs.models import Organization, User
from orgs.security import hash_token
from policies.errors import NotFound

JOB_TOKEN_PREFIX = "cs_j_"  # noqa: S105  (a prefix, not a secret)
# Beyond the job's own runtime limit, for materialising inputs and uploading outputs.
JOB_TOKEN_GRACE = timedelta(hours=1)


def job_scope(job: Job) -> JobScope:
    """The job as the dataset catalog sees it: its id and its pinned input versions."""
    pinned = frozenset(str(e.get("version_id")) for e in job.inputs or [] if isinstance(e, Mapping))
    return JobScope(id=job.id, pinned=pinned)


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


def job_for_token(session: Session, token: str) -> Job | None:
    """The job behind a live job token; None when the token is unknown or expired."""
    row = session.get(JobToken, hash_token(token))
    if row is None or row.expires_at <= utcnow():
        return None
    return session.get(Job, row.job_id)


def job_caller(session: Session, org_slug: str, token: str) -> Caller | None:
    """The caller behind a job token for organization `org_slug`, or None when the token
    is unknown or expired. 404 when the job belongs to another org or its user is no
    longer a member (a job cannot act for someone who left)."""
    job = job_for_token(session, token)
    if job is None:
        return None
    user = session.get(User, job.user_id)
    org = session.scalars(select(Organization).where(Organization.slug == org_slug)).first()
    if user is None or org is None or org.id != job.org_id:
        raise NotFound(f"No organization '{org_slug}' for this job.", code="org_not_found")
    return Caller(ctx=member_context(session, org_slug, user), job=job_scope(job))
