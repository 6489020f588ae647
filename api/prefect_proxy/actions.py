"""What a member's Prefect call becomes in Compute Share (sync; run in the thread pool):
a deployment run is a job submission through admission, a cancel is a job cancel."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from flows import jobs
from flows.gateway import PrefectGateway
from flows.models import Deployment, Job
from orgs.context import OrgContext, member_context
from orgs.db import Database
from orgs.models import Organization, User
from policies.errors import Invalid, NotFound
from policies.prefect_rules import Actor, Principal


def _context(session: Any, actor: Actor) -> OrgContext:
    user = session.get(User, actor.user_id)
    org = session.get(Organization, actor.org_id)
    if user is None or org is None:
        raise NotFound("No such organization.", code="org_not_found")
    # A job's own credential (a subflow's run) acts on past its user's missing 2FA.
    return member_context(session, org.slug, user, as_job=actor.principal is Principal.job)


def _spec(dep: Deployment, body: Mapping[str, Any]) -> jobs.SubmitSpec:
    """Prefect's DeploymentFlowRunCreate, as far as a submission may take it."""
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise Invalid("parameters must be an object.", field="parameters")
    tags = body.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise Invalid("tags must be a list of strings.", field="tags")
    if body.get("job_variables"):
        # They would change what runs on a member's machine (command, environment).
        raise Invalid(
            "Job variables come from the deployment; they cannot be set per run "
            "(rule: deployment_job_variables).",
            field="job_variables",
            code="deployment_job_variables",
        )
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 128):
        raise Invalid("idempotency_key must be 1-128 characters.", field="idempotency_key")
    return jobs.SubmitSpec(
        deployment=dep.name, parameters=dict(parameters), tags=tags, idempotency_key=key
    )


def submit_run(
    db: Database,
    gateway: PrefectGateway,
    actor: Actor,
    prefect_deployment_id: uuid.UUID,
    body: Mapping[str, Any],
) -> Job:
    """`POST /deployments/{id}/create_flow_run` as a submission by the member: counted
    against their limits, held or rejected (AdmissionRejected) with the rule's reason."""
    with db.session() as session:
        dep = session.scalars(
            select(Deployment).where(
                Deployment.org_id == actor.org_id,
                Deployment.prefect_deployment_id == prefect_deployment_id,
            )
        ).first()
        if dep is None:
            raise NotFound("No such deployment in this organization.", code="deployment_not_found")
        ctx = _context(session, actor)
        job, _created = jobs.submit(ctx, session, gateway, _spec(dep, body))
        session.refresh(job)
        session.expunge(job)
        return job


def cancel_run(db: Database, gateway: PrefectGateway, actor: Actor, job_id: uuid.UUID) -> None:
    """A member's CANCELLING/CANCELLED state: the job is cancelled as `cshare` would."""
    with db.session() as session:
        jobs.cancel(_context(session, actor), session, gateway, job_id)
