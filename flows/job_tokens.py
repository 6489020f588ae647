"""Job tokens (`cs_j_...`): the credential a job's flow gets on the machine.

Minted per job at claim and scoped to that job alone: it reads the job's pinned inputs,
writes the job's outputs (only the declared ones, when the job declared any) and the
job's own metadata and run record, and nothing else (every route refuses it unless it
names a `policies.access.JobTokenUse`; see `api.job_credentials`). The job's user's
current role and dataset access still apply on top, so a member who lost access cuts
their running jobs off too.

It dies with the job: the ledger revokes it on every terminal transition
(`Effect.revoke_credentials`), a token of a job that has ended is refused even if a row
survived, and it expires at the job's runtime limit plus `CSHARE_JOB_TOKEN_GRACE_S`.
Only the SHA-256 of the secret is stored.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from datasets.access import Caller
from datasets.models import JobToken
from flows.job_data import job_scope
from flows.models import FINAL_STATES, Job
from orgs.context import member_context
from orgs.db import utcnow
from orgs.models import Organization, User
from orgs.security import hash_token
from policies.errors import NotFound

JOB_TOKEN_PREFIX = "cs_j_"  # noqa: S105  (a prefix, not a secret)


def issue_job_token(session: Session, job: Job, *, grace_s: float) -> str:
    """A fresh token for `job`'s flow (shown once; only its hash is stored). No commit.

    For the claim: the machine hands it to the flow run as `CSHARE_JOB_TOKEN`. It
    expires `grace_s` (`Settings.job_token_grace_s`) after the job's runtime limit;
    `revoke_job_tokens` ends it when the job ends.
    """
    token = JOB_TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(
        JobToken(
            token_hash=hash_token(token),
            job_id=job.id,
            expires_at=utcnow() + timedelta(seconds=job.max_runtime_s + grace_s),
        )
    )
    return token


def revoke_job_tokens(session: Session, job_id: uuid.UUID) -> None:
    """Every token of the job (the ledger's `revoke_credentials` effect). No commit."""
    session.execute(delete(JobToken).where(JobToken.job_id == job_id))


def is_job_token(token: str) -> bool:
    return token.startswith(JOB_TOKEN_PREFIX)


def job_for_token(session: Session, token: str) -> Job | None:
    """The job behind a live job token; None when the token is unknown, revoked or
    expired, or its job has ended (even if a token row survived the revocation)."""
    row = session.get(JobToken, hash_token(token))
    if row is None or row.expires_at <= utcnow():
        return None
    job = session.get(Job, row.job_id)
    if job is None or job.state in FINAL_STATES:
        return None
    return job


def job_caller(session: Session, org_slug: str, token: str) -> Caller | None:
    """The caller behind a job token for organization `org_slug`, or None when the token
    is not live (`job_for_token`). 404 when the job belongs to another org or its user
    is no longer a member (a job cannot act for someone who left)."""
    job = job_for_token(session, token)
    if job is None:
        return None
    user = session.get(User, job.user_id)
    org = session.scalars(select(Organization).where(Organization.slug == org_slug)).first()
    if user is None or org is None or org.id != job.org_id:
        raise NotFound(f"No organization '{org_slug}' for this job.", code="org_not_found")
    return Caller(ctx=member_context(session, org_slug, user, as_job=True), job=job_scope(job))
