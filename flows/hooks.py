"""What leaving an organization (or deleting it) does to jobs, schedules and deployments.

Registered with `orgs.cascade` at start-up, by `flows.wiring.wire_hooks`. Hooks
change rows in the caller's transaction only; Prefect is told afterwards by the
dispatcher, from the ledger (cancelling jobs, final jobs whose run is still live) or
from the Prefect outbox (for rows that are deleted here), so a crash can never leave a
departed member's job running unnoticed.
"""

from __future__ import annotations

import uuid

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from flows import ledger
from flows.gateway import work_pool_name
from flows.jobs import SETTLED_PREFECT_STATES
from flows.models import (
    ACTIVE_STATES,
    CANCELLING,
    HELD,
    Deployment,
    Job,
    PrefectTask,
    Schedule,
)
from orgs import audit, settings_doc
from orgs.models import Machine, Organization
from policies.errors import Invalid
from policies.job_states import JobEvent

MEMBER_GONE = "Its owner is no longer a member of the organization."


def cancel_member_jobs(session: Session, org: Organization, user_id: uuid.UUID) -> None:
    """Held jobs -> cancelled; active jobs -> cancelling; the member's schedules go."""
    # Held jobs, and active ones whose run was never created (Prefect was down): at once;
    # the rest are asked to stop (the dispatcher tells Prefect from the ledger).
    held_n = active_n = 0
    for job in session.scalars(
        select(Job)
        .where(
            Job.org_id == org.id,
            Job.user_id == user_id,
            Job.state.in_(tuple(ACTIVE_STATES - {CANCELLING} | {HELD})),
        )
        .order_by(Job.id)
        .with_for_update()
    ):
        if job.state == HELD or job.flow_run_id is None:
            ledger.apply(session, job, JobEvent.cancel, reason=MEMBER_GONE)
            held_n += 1
        else:
            ledger.apply(session, job, JobEvent.request_cancel, reason=MEMBER_GONE)
            active_n += 1
    schedules = [
        (sid, psid, pdid)
        for sid, psid, pdid in session.execute(
            select(Schedule.id, Schedule.prefect_schedule_id, Deployment.prefect_deployment_id)
            .join(Deployment, Deployment.id == Schedule.deployment_id)
            .where(Schedule.org_id == org.id, Schedule.user_id == user_id)
        )
    ]
    _queue_schedule_deletions(session, schedules)
    session.execute(delete(Schedule).where(Schedule.org_id == org.id, Schedule.user_id == user_id))
    if held_n or active_n or schedules:
        audit.record(
            session,
            org_id=org.id,
            actor=None,
            action="jobs.cancelled_for_member",
            target_type="user",
            target_id=user_id,
            after={
                "held_cancelled": held_n,
                "active_cancelling": active_n,
                "schedules_deleted": len(schedules),
            },
        )


def forget_org_in_prefect(session: Session, org: Organization) -> None:
    """The org's rows go with it (cascade); queue the Prefect side for the dispatcher,
    in this order: every live run ends `Cancelled` (forced: the org's agents are told
    to stop, so nobody would finish a cancellation), its deployments (and so their
    schedules and queued runs) are deleted, then its work pools. The queue survives a
    restart, and every step is idempotent."""
    reason = f"The organization '{org.slug}' was deleted."
    runs = session.scalars(
        select(Job.flow_run_id).where(
            Job.org_id == org.id,
            Job.flow_run_id.is_not(None),
            # Live in our ledger, or final here while Prefect may not have ended it yet.
            or_(
                Job.state.in_(tuple(ACTIVE_STATES | {HELD})),
                Job.prefect_state.not_in(tuple(SETTLED_PREFECT_STATES)),
            ),
        )
    ).all()
    for run_id in runs:
        if run_id is not None:
            session.add(PrefectTask(kind="force_cancel_run", target_id=run_id, reason=reason))
    deployments = session.scalars(
        select(Deployment.prefect_deployment_id).where(
            Deployment.org_id == org.id, Deployment.prefect_deployment_id.is_not(None)
        )
    ).all()
    for dep_id in deployments:
        if dep_id is not None:
            session.add(PrefectTask(kind="delete_deployment", target_id=dep_id, reason=reason))
    for pool in _work_pools_of(session, org):
        session.add(
            PrefectTask(kind="delete_work_pool", target_id=org.id, target_name=pool, reason=reason)
        )
    # Explicit deletes: not every backend configuration cascades (and order matters).
    session.execute(delete(Job).where(Job.org_id == org.id))
    session.execute(delete(Schedule).where(Schedule.org_id == org.id))
    session.execute(delete(Deployment).where(Deployment.org_id == org.id))


def _work_pools_of(session: Session, org: Organization) -> list[str]:
    """Every pool the org may have in Prefect, `<slug>-<type>`: one per machine type its
    deployments, jobs, machines (agents create their own pool) or limits name."""
    types = set(settings_doc.load(org.settings).limits.machine_types)
    for column, org_id in (
        (Deployment.machine_type, Deployment.org_id),
        (Job.machine_type, Job.org_id),
        (Machine.machine_type, Machine.org_id),
    ):
        types.update(session.scalars(select(column).where(org_id == org.id).distinct()))
    pools: list[str] = []
    for machine_type in sorted(types):
        try:
            pools.append(work_pool_name(org.slug, machine_type))
        except Invalid:  # a name Prefect reserves: no such pool was ever created
            continue
    return pools


def _queue_schedule_deletions(
    session: Session, schedules: list[tuple[uuid.UUID, uuid.UUID | None, uuid.UUID | None]]
) -> None:
    for _id, prefect_schedule_id, prefect_deployment_id in schedules:
        if prefect_schedule_id is not None and prefect_deployment_id is not None:
            session.add(
                PrefectTask(
                    kind="delete_schedule",
                    target_id=prefect_schedule_id,
                    deployment_id=prefect_deployment_id,
                    reason="Its creator left the organization.",
                )
            )
