"""What the proxy looks up in the ledger to decide (sync; called in the thread pool).

Every answer is a `policies.prefect_rules` fact or a list of ids in the caller's scope;
the decisions themselves are made there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Final

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session

from flows import visibility
from flows.gateway import work_pool_name
from flows.jobs import visible_jobs
from flows.models import CANCELLING, RUNNING, SCHEDULED, Deployment, Job, JobSubrun
from orgs import settings_doc
from orgs.models import Organization
from policies.access import Viewer
from policies.prefect_rules import (
    Actor,
    DeploymentFacts,
    FlowFacts,
    Principal,
    RunFacts,
    Verb,
    check_run,
)

# Filters with no ids of their own see this many of the caller's most recent runs;
# older ones are reached by naming their ids (each is checked).
SCOPE_LIMIT: Final = 1000
_HELD_BY_MACHINE: Final = (RUNNING, CANCELLING)


def _facts(job: Job) -> RunFacts:
    return RunFacts(
        job_id=job.id,
        org_id=job.org_id,
        user_id=job.user_id,
        machine_id=job.machine_id,
        machine_type=job.machine_type,
        state=job.state,
    )


def run_facts(session: Session, run_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, RunFacts]:
    ids = list(set(run_ids))
    if not ids:
        return {}
    jobs = session.scalars(select(Job).where(Job.flow_run_id.in_(ids)))
    found = {job.flow_run_id: _facts(job) for job in jobs if job.flow_run_id is not None}
    rest = [i for i in ids if i not in found]
    if rest:
        # A subflow run acts as its job: the same facts.
        subruns = session.execute(
            select(JobSubrun.flow_run_id, Job)
            .join(Job, Job.id == JobSubrun.job_id)
            .where(JobSubrun.flow_run_id.in_(rest))
        ).all()
        found.update((run_id, _facts(job)) for run_id, job in subruns)
    return found


def allowed_runs(
    session: Session, actor: Actor, run_ids: Iterable[uuid.UUID], verb: Verb
) -> list[uuid.UUID]:
    """The ids among `run_ids` the actor may `verb` (order kept, duplicates dropped)."""
    ids = list(dict.fromkeys(run_ids))
    facts = run_facts(session, ids)
    return [i for i in ids if check_run(actor, verb, facts.get(i))]


def scope_run_ids(session: Session, actor: Actor) -> list[uuid.UUID]:
    """The runs a filter with no ids of its own is narrowed to (newest first): the
    actor's jobs' runs, then their subflow runs."""
    if actor.principal is Principal.job:
        where: tuple[Any, ...] = (Job.id == actor.job_id,)
    elif actor.principal is Principal.machine:
        where = (
            Job.org_id == actor.org_id,
            Job.machine_id == actor.machine_id,
            Job.state.in_(_HELD_BY_MACHINE),
        )
    else:
        assert actor.viewer is not None
        where = (visible_jobs(actor.viewer),)
    runs = select(Job.flow_run_id).where(Job.flow_run_id.is_not(None), *where)
    runs = runs.order_by(Job.created_at.desc()).limit(SCOPE_LIMIT)
    ids = [i for i in session.scalars(runs) if i is not None]
    subruns = (
        select(JobSubrun.flow_run_id)
        .join(Job, Job.id == JobSubrun.job_id)
        .where(*where)
        .order_by(JobSubrun.created_at.desc())
        .limit(SCOPE_LIMIT)
    )
    return ids + list(session.scalars(subruns))


def org_pools(session: Session, org_id: uuid.UUID) -> frozenset[str]:
    org = session.get(Organization, org_id)
    if org is None:
        return frozenset()
    types = settings_doc.load(org.settings or {}).limits.machine_types
    return frozenset(work_pool_name(org.slug, t) for t in types)


def org_deployment_ids(
    session: Session, org_id: uuid.UUID, viewer: Viewer | None = None
) -> list[uuid.UUID]:
    """The org's deployments in Prefect; for a member, those whose project they see."""
    stmt = select(Deployment.prefect_deployment_id).where(
        Deployment.org_id == org_id, Deployment.prefect_deployment_id.is_not(None)
    )
    if viewer is not None:
        stmt = stmt.where(visibility.visible_deployments(viewer))
    return [i for i in session.scalars(stmt) if i is not None]


def org_flow_names(session: Session, org_id: uuid.UUID) -> list[str]:
    """The flows the organization's deployments run (Prefect's flows are global)."""
    names = session.scalars(
        select(Deployment.flow_name).where(Deployment.org_id == org_id).distinct()
    )
    return sorted(names)


def _holds(actor: Actor, *where: object) -> object:
    """SQL: a job the actor holds (the job itself, or one the machine claimed)."""
    if actor.principal is Principal.job:
        return exists().where(Job.id == actor.job_id, *where)  # type: ignore[arg-type]
    return exists().where(
        Job.machine_id == actor.machine_id,
        Job.state.in_(_HELD_BY_MACHINE),
        *where,  # type: ignore[arg-type]
    )


def deployment(session: Session, prefect_id: uuid.UUID) -> Deployment | None:
    return session.scalars(
        select(Deployment).where(Deployment.prefect_deployment_id == prefect_id)
    ).first()


def deployment_facts(session: Session, actor: Actor, dep: Deployment | None) -> DeploymentFacts:
    if dep is None or (
        actor.viewer is not None and not visibility.can_see_deployment(session, actor.viewer, dep)
    ):
        # Not there, or in a project the member does not see: like another org's (404).
        return DeploymentFacts(org_id=uuid.UUID(int=0))
    held = False
    if actor.principal in (Principal.job, Principal.machine):
        held = bool(session.scalar(select(_holds(actor, Job.deployment_id == dep.id))))  # type: ignore[call-overload]
    return DeploymentFacts(org_id=dep.org_id, held_by_actor=held)


def deployment_by_name(
    session: Session, org_id: uuid.UUID, name: str, viewer: Viewer | None = None
) -> Deployment | None:
    """The org's deployment `name` (for a member: if they see its project); Prefect's
    own `<org>.<name>` is accepted too."""
    org = session.get(Organization, org_id)
    if org is None:
        return None
    name = name.removeprefix(f"{org.slug}.")
    dep = session.scalars(
        select(Deployment).where(Deployment.org_id == org_id, Deployment.name == name)
    ).first()
    if (
        dep is not None
        and viewer is not None
        and not visibility.can_see_deployment(session, viewer, dep)
    ):
        return None
    return dep


def flow_facts(session: Session, actor: Actor, flow_name: str) -> FlowFacts:
    in_org = bool(
        session.scalar(
            select(
                exists().where(Deployment.org_id == actor.org_id, Deployment.flow_name == flow_name)
            )
        )
    )
    held = False
    if actor.principal in (Principal.job, Principal.machine):
        held = bool(
            session.scalar(
                select(
                    _holds(  # type: ignore[call-overload]
                        actor,
                        Job.deployment_id == Deployment.id,
                        Deployment.flow_name == flow_name,
                    )
                )
            )
        )
    return FlowFacts(in_org=in_org, held_by_actor=held)


def offered_runs(
    session: Session, actor: Actor, runs: Sequence[tuple[uuid.UUID, str | None]]
) -> set[uuid.UUID]:
    """Of the (run id, idempotency key) pairs Prefect has scheduled on the machine's pool,
    those the ledger offers this machine: its org's jobs of its type, released and not
    claimed by another machine. A run made for a job whose id is not stored yet carries
    the job id as its idempotency key."""
    if not runs:
        return set()
    keys: dict[uuid.UUID, uuid.UUID] = {}
    for run_id, key in runs:
        try:
            if key:
                keys[uuid.UUID(key)] = run_id
        except ValueError:
            continue
    ids = [run_id for run_id, _ in runs]
    jobs = session.scalars(
        select(Job).where(
            Job.org_id == actor.org_id,
            Job.machine_type == actor.machine_type,
            or_(Job.machine_id.is_(None), Job.machine_id == actor.machine_id),
            Job.state.in_((SCHEDULED, RUNNING)),
            or_(
                Job.flow_run_id.in_(ids),
                and_(Job.flow_run_id.is_(None), Job.id.in_(list(keys))),
            ),
        )
    )
    out: set[uuid.UUID] = set()
    for job in jobs:
        if job.flow_run_id is not None:
            out.add(job.flow_run_id)
        elif job.id in keys:
            out.add(keys[job.id])
    return out
