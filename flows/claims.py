"""The claim gate: nothing runs on a member's machine without the control plane's yes.

Before our worker runs a flow run it `POST`s `/agent/claims {flow_run_id}`; `claim`
answers with one of four decisions:

- ``run``: the job is admitted now; the answer carries the limits the machine enforces
  (memory, max runtime). The ledger records the machine and the claim time.
- ``hold``: a limit is full. The run goes back to Prefect's held queue
  (`AwaitingUserSlot`, with the reason) and the dispatcher releases it later.
- ``reject``: the run must never execute (its submitter left, it asks for more than the
  organization allows, it is already over). The run ends `Cancelled`/`Rejected` in
  Prefect with the reason as its message.
- ``skip``: not this machine's to take (another machine claimed it first, the machine is
  full or of another type). Prefect's state is left alone for the right machine.

A run the control plane never created or admitted (made in the Prefect UI or API by
anyone holding Prefect access) is refused and cancelled with the reason: identity comes
from the ledger, never from the run's tags. The one run adopted here is a fire of one of
the org's own Prefect-backed schedules, admitted for the schedule's owner exactly like a
submission.

Prefect is never called while the database write lock is held (a SQLite write lock must
not wait on the network): the ledger is committed first and Prefect is told after; if
that fails the agent gets 503 and claims again, and the committed ledger state makes the
second answer the same.

Machines that stop taking work are handled here too, since only `flows` knows jobs:
``mark_runs_for_cancellation`` (wired to ``on_machine_revoked``) marks the runs of a
rejected or removed machine for cancellation, and ``sweep_offline_machines`` (one call
per dispatcher cycle) cancels those in Prefect, crashes the runs of machines whose
heartbeats stopped, and settles the ledger, which frees their slots.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flows import ledger, lineage
from flows.gateway import FlowRunInfo, PrefectGateway, StateType, work_pool_name
from flows.models import (
    CANCELLING,
    FINAL_STATES,
    REJECTED,
    RUNNING,
    SCHEDULED,
    Deployment,
    Job,
    Schedule,
)
from flows.usage import REQUESTED_KEY, admission_snapshot, job_request_for
from orgs import machines as registry
from orgs import settings_doc
from orgs.db import utcnow
from orgs.models import Machine, Membership, Organization, ProvisionedMachine, User
from policies.admission import Accept, Hold, JobRequest, Reject, decide
from policies.errors import Forbidden, NotFound
from policies.job_states import PREFECT_END_EVENTS, JobEvent
from policies.permissions import Role

__all__ = [
    "ClaimResult",
    "Decision",
    "SweepReport",
    "claim",
    "reconcile_heartbeat",
    "report_limit",
    "settle_revoked",
    "sweep_offline_machines",
]

log = logging.getLogger(__name__)

Decision = Literal["run", "hold", "reject", "skip"]

# A run claimed this recently may be missing from a heartbeat that was already on its
# way when the claim landed; only older claims count as lost.
HEARTBEAT_GRACE: Final = timedelta(seconds=10)
# How long a revoked machine's agent has to stop its runs before they are ended
# `Cancelled` by the control plane (the agent's credential died with the machine).
REVOKE_GRACE: Final = timedelta(seconds=30)
SWEEP_BATCH: Final = 100

_ON_A_MACHINE: Final = (RUNNING, CANCELLING)


@dataclass(frozen=True, slots=True)
class ClaimResult:
    decision: Decision
    flow_run_id: uuid.UUID
    reason: str = ""
    rule: str | None = None
    job_id: uuid.UUID | None = None
    memory_mb: int | None = None
    max_runtime_s: int | None = None
    machine_type: str | None = None
    user: str | None = None
    # What Prefect must be told after the commit (hold or reject), if anything.
    prefect_action: Literal["hold", "reject"] | None = field(default=None, repr=False)


# ------------------------------------------------------------------------- claim


def claim(
    session: Session,
    gateway: PrefectGateway,
    machine: Machine,
    flow_run_id: uuid.UUID,
    *,
    running: int | None = None,
) -> ClaimResult:
    """Decide whether `machine` may run `flow_run_id` now; commits, then tells Prefect.

    `running`: how many runs the agent has right now (it keeps the exact count; the
    ledger may lag behind runs that just ended). Raises NotFound for a run this machine's
    organization does not own, Forbidden for a machine that is not approved.
    """
    _require_approved(machine)
    org = session.get(Organization, machine.org_id)
    if org is None:  # deleted between authentication and now
        raise NotFound("No such flow run.", code="flow_run_not_found")
    result = _claim_from_ledger(session, org, machine, flow_run_id, running)
    if result is None:
        # Not in the ledger by run id: read the run from Prefect with no lock held. A run
        # made for a job carries the job id as its idempotency key (its id may not be
        # stored yet: submission attaches it after answering); only other runs are
        # adopted.
        session.commit()
        info = _read_run(gateway, flow_run_id)
        result = _claim_from_ledger(
            session, org, machine, flow_run_id, running, job_key=_as_uuid(info.idempotency_key)
        )
        if result is None:
            result = _adopt(session, org, machine, info, running)
    session.commit()
    _tell_prefect(gateway, result)
    return result


def _require_approved(machine: Machine) -> None:
    if machine.status == registry.MachineStatus.approved:
        return
    if machine.status == registry.MachineStatus.rejected:
        why = f": {machine.status_reason}" if machine.status_reason else "."
        raise Forbidden(
            f"Machine '{machine.name}' was rejected by an admin{why}", code="machine_rejected"
        )
    raise Forbidden(
        f"Machine '{machine.name}' is waiting for an admin's approval; it takes no jobs yet.",
        code="machine_not_approved",
    )


def _read_run(gateway: PrefectGateway, flow_run_id: uuid.UUID) -> FlowRunInfo:
    try:
        return gateway.read_flow_run(flow_run_id)
    except NotFound:
        raise _run_not_found() from None


def _run_not_found() -> NotFound:
    return NotFound("No such flow run in this organization.", code="flow_run_not_found")


def _skip(flow_run_id: uuid.UUID, reason: str, job: Job | None = None) -> ClaimResult:
    return ClaimResult("skip", flow_run_id, reason, job_id=job.id if job else None)


def _draining(session: Session, machine: Machine) -> bool:
    """A capacity provider is stopping the machine (flows.dispatch.scaler); read under
    the org lock the scaler marks it under."""
    phase = session.scalar(
        select(ProvisionedMachine.phase).where(ProvisionedMachine.machine_id == machine.id)
    )
    return phase == "draining"


def _full(machine: Machine, running: int | None) -> str | None:
    if running is not None and running >= machine.slots:
        return f"Machine '{machine.name}' is running {running} of its {machine.slots} slots."
    return None


def _member_role(session: Session, org_id: uuid.UUID, user_id: uuid.UUID) -> Role | None:
    role = session.scalar(
        select(Membership.role).where(Membership.org_id == org_id, Membership.user_id == user_id)
    )
    return Role(role) if role else None


def _as_uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


def _claim_from_ledger(
    session: Session,
    org: Organization,
    machine: Machine,
    flow_run_id: uuid.UUID,
    running: int | None,
    *,
    job_key: uuid.UUID | None = None,
) -> ClaimResult | None:
    """The decision for a run the ledger knows; None when it does not know it.

    `job_key`: the run's idempotency key, which is its job's id for every run made
    for a job; such a job whose run id is not stored yet gets it stored here (the
    same first-writer-wins rule as the submission's own attach).
    """
    # The organization row first, then the job's: the dispatcher locks in this order
    # too (admission under the org lock), so the two can never deadlock on PostgreSQL.
    session.execute(select(Organization.id).where(Organization.id == org.id).with_for_update())
    job = session.scalars(
        select(Job).where(Job.flow_run_id == flow_run_id).with_for_update()
    ).first()
    if job is None and job_key is not None:
        job = session.scalars(
            select(Job)
            .where(Job.id == job_key, Job.org_id == org.id, Job.flow_run_id.is_(None))
            .with_for_update()
        ).first()
        if job is not None:
            job.flow_run_id = flow_run_id
    if job is None:
        return None
    if job.org_id != org.id:
        raise _run_not_found()  # another organization's run: not even its existence
    user_name = session.scalar(select(User.name).where(User.id == job.user_id))
    if job.state == RUNNING and job.machine_id == machine.id:
        # The same machine asking again (its first answer was lost): the same yes.
        return _run(job, flow_run_id, user_name)
    if job.state in FINAL_STATES or job.state == CANCELLING:
        # A job refused a moment ago (the dispatcher adopting the same run, say) keeps
        # the reason it was refused for: that is what people need to read in Prefect.
        reason = (
            job.reason
            if job.state == REJECTED and job.reason
            else f"The job is already {job.state}; it will not run again (submit a new job)."
        )
        return ClaimResult(
            "reject",
            flow_run_id,
            reason,
            rule=job.rule or "job_state",
            job_id=job.id,
            prefect_action="reject",
        )
    if job.state == RUNNING:
        return _skip(flow_run_id, "Another machine has already claimed this run.", job)
    if _draining(session, machine):
        return _skip(
            flow_run_id,
            f"Machine '{machine.name}' is draining: its capacity provider stops it once "
            "its jobs end, so it takes no new one.",
            job,
        )
    if job.machine_type != machine.machine_type:
        return _skip(
            flow_run_id,
            f"The job needs a '{job.machine_type}' machine; this one is '{machine.machine_type}'.",
            job,
        )
    if job.image and not (machine.hardware or {}).get("docker"):
        return _skip(
            flow_run_id,
            "The job runs in a container; this machine's agent reaches no Docker engine.",
            job,
        )
    full = _full(machine, running)
    if full:
        return _skip(flow_run_id, full, job)
    # SCHEDULED (released) or HELD (released in Prefect a moment before the ledger
    # caught up): decide again under the org lock, as the dispatcher would.
    deployment_known = job.deployment_id is None or bool(
        session.scalar(select(Deployment.id).where(Deployment.id == job.deployment_id))
    )
    snapshot = admission_snapshot(
        session,
        org,
        job.user_id,
        _member_role(session, org.id, job.user_id),
        job_request_for(job, deployment_known=deployment_known),
        exclude_job_id=job.id,
        for_release=True,
        lock=True,
        deployment_id=job.deployment_id,
    )
    decision = decide(snapshot)
    if isinstance(decision, Accept):
        _start(session, job, machine, decision, running)
        return _run(job, flow_run_id, user_name)
    ledger.apply(session, job, ledger.event_for(decision), decision=decision)
    kind: Literal["hold", "reject"] = "hold" if isinstance(decision, Hold) else "reject"
    return ClaimResult(
        kind, flow_run_id, decision.reason, decision.rule, job.id, prefect_action=kind
    )


def _start(
    session: Session, job: Job, machine: Machine, accept: Accept, running: int | None
) -> None:
    ledger.apply(session, job, JobEvent.claim, decision=accept, machine=machine)
    if running is not None:
        # Capacity reads this until the next heartbeat brings the agent's own count.
        machine.running_jobs = min(machine.slots, running + 1)


def _run(job: Job, flow_run_id: uuid.UUID, user_name: str | None) -> ClaimResult:
    return ClaimResult(
        "run",
        flow_run_id,
        job_id=job.id,
        memory_mb=job.memory_mb,
        max_runtime_s=job.max_runtime_s,
        machine_type=job.machine_type,
        user=user_name,
    )


# A run on an org's pool that the control plane neither created nor admitted: its tags
# (`org:`, `user:`) are labels anyone with Prefect access can write, never an identity.
NOT_ADMITTED: Final = (
    "Compute Share did not create or admit this run, so it does not run on the "
    "organization's machines (identity comes from the job ledger, not from tags). Submit "
    "it through Compute Share: `cshare job submit`, or `prefect deployment run` against "
    "Compute Share's Prefect API."
)


def _adopt(
    session: Session,
    org: Organization,
    machine: Machine,
    info: FlowRunInfo,
    running: int | None,
) -> ClaimResult:
    """A run the ledger does not know: only a fire of one of the org's own schedules
    (Prefect-backed schedules) is admitted, for the schedule's owner; anything else is
    refused and cancelled with the reason."""
    pool = work_pool_name(org.slug, machine.machine_type)
    if info.work_pool_name != pool:
        # Not in this machine's pool: nothing this machine may know about.
        raise _run_not_found()
    if info.is_final:
        return _skip(info.id, f"The run is already {info.state_type.value.lower()}.")
    full = _full(machine, running)
    if full:
        return _skip(info.id, full)

    def reject(reason: str, rule: str) -> ClaimResult:
        return ClaimResult("reject", info.id, reason, rule, prefect_action="reject")

    schedule = (
        session.scalars(
            select(Schedule).where(
                Schedule.org_id == org.id, Schedule.prefect_schedule_id == info.schedule_id
            )
        ).first()
        if info.schedule_id is not None
        else None
    )
    if schedule is None:
        return reject(NOT_ADMITTED, "run_origin")
    user = session.get(User, schedule.user_id)
    role = _member_role(session, org.id, schedule.user_id)
    if user is None or role is None:
        return reject(
            f"The schedule's owner is not a member of organization '{org.slug}'.",
            "role_may_submit",
        )
    deployment = None
    if info.deployment_id is not None:
        deployment = session.scalars(
            select(Deployment).where(
                Deployment.org_id == org.id,
                Deployment.prefect_deployment_id == info.deployment_id,
            )
        ).first()
    request = JobRequest(machine_type=machine.machine_type, deployment_known=deployment is not None)
    snapshot = admission_snapshot(
        session,
        org,
        user.id,
        role,
        request,
        lock=True,
        deployment_id=deployment.id if deployment is not None else None,
    )
    decision = decide(snapshot)
    if isinstance(decision, Reject):
        return reject(decision.reason, decision.rule)
    limits = snapshot.limits.limits
    accepted = isinstance(decision, Accept)
    job = ledger.create(
        session,
        JobEvent.claim if accepted else JobEvent.hold,
        actor=None,
        audit_action="job.adopted",
        audit_after={
            "flow_run_id": str(info.id),
            "source": "schedule",
            "schedule_id": str(schedule.id),
            "user_id": str(user.id),
        },
        machine=machine if accepted else None,
        decision=decision,
        org_id=org.id,
        user_id=user.id,
        deployment_id=deployment.id if deployment else None,
        schedule_id=schedule.id,
        source="schedule",
        machine_type=machine.machine_type,
        parameters=dict(info.parameters),
        code=deployment.code if deployment else None,
        memory_mb=limits.max_job_memory,
        max_runtime_s=limits.max_job_runtime,
        tags=[f"schedule:{schedule.id}"],
        job_metadata={
            REQUESTED_KEY: {"memory_mb": None, "max_runtime_s": None},
            "adopted_at_claim": True,
        },
        flow_run_id=info.id,
        idempotency_key=str(info.id),
    ).job
    if accepted and running is not None:
        machine.running_jobs = min(machine.slots, running + 1)
    try:
        session.flush()
    except IntegrityError:  # adopted by a concurrent claim on another machine
        session.rollback()
        return _skip(info.id, "Another machine has already claimed this run.")
    if isinstance(decision, Hold):
        return ClaimResult(
            "hold", info.id, decision.reason, decision.rule, job.id, prefect_action="hold"
        )
    return _run(job, info.id, user.name)


def _tell_prefect(gateway: PrefectGateway, result: ClaimResult) -> None:
    if result.prefect_action == "hold":
        gateway.hold_flow_run(result.flow_run_id, result.reason)
    elif result.prefect_action == "reject":
        gateway.reject_flow_run(result.flow_run_id, result.reason)


def report_limit(
    session: Session,
    machine: Machine,
    flow_run_id: uuid.UUID,
    *,
    limit: Literal["memory", "runtime"],
    message: str,
) -> Job:
    """The agent stopped a run at one of its limits: the job ends `failed` with that
    limit as its reason (the agent has already set the same `Failed` state in Prefect).

    Needed because the engine reports its own end first (`Failed: MemoryError`, or
    `Crashed` on the runtime kill) and the dispatcher may copy that into the ledger
    before the agent's correction reaches Prefect. Only the machine that runs the job
    may report on it.
    """
    job = session.scalars(
        select(Job).where(Job.flow_run_id == flow_run_id).with_for_update()
    ).first()
    if job is None or job.org_id != machine.org_id or job.machine_id != machine.id:
        raise _run_not_found()
    ledger.apply(
        session,
        job,
        JobEvent.limit_kill,
        reason=message,
        rule=f"{limit}_limit",
        prefect_state=StateType.FAILED.value,
    )
    session.commit()
    return job


def report_usage(
    session: Session, machine: Machine, flow_run_id: uuid.UUID, used: dict[str, float]
) -> None:
    """What a run used on the machine (wall time, CPU seconds, peak memory), recorded
    on its job's lineage. Sent with the machine's credential: the job's own may already
    be revoked when its process ends. Only the machine that ran the job may report."""
    job = session.scalars(select(Job).where(Job.flow_run_id == flow_run_id)).first()
    if job is None or job.org_id != machine.org_id or job.machine_id != machine.id:
        raise _run_not_found()
    lineage.record_job_lineage(session, job.id, resources_used=used)
    session.commit()


# ---------------------------------------------------- machines that stop working


def mark_runs_for_cancellation(session: Session, machine: Machine, reason: str) -> None:
    """The machine stops taking work: its runs are to be cancelled (rows only; Prefect
    is told after the commit by `settle_revoked`, or by the next sweep)."""
    jobs = session.scalars(
        select(Job).where(Job.machine_id == machine.id, Job.state.in_((RUNNING, SCHEDULED)))
    ).all()
    for job in jobs:
        ledger.apply(session, job, JobEvent.request_cancel, reason=reason)


def settle_revoked(session: Session, gateway: PrefectGateway, machine_id: uuid.UUID) -> int:
    """After a machine was rejected or removed: cancel its runs in Prefect now.

    Best effort (the sweep retries); returns how many runs were asked to stop.
    """
    jobs = session.scalars(
        select(Job).where(Job.machine_id == machine_id, Job.state == CANCELLING)
    ).all()
    session.commit()
    asked = 0
    for job in jobs:
        if job.flow_run_id is None:
            continue
        try:
            gateway.cancel_flow_run(job.flow_run_id, job.reason or None)
            asked += 1
        except Exception:  # the sweep tries again; the removal itself has happened
            log.warning("could not cancel run %s of a revoked machine", job.flow_run_id)
    return asked


@dataclass
class SweepReport:
    crashed: list[uuid.UUID] = field(default_factory=list)
    cancelled: list[uuid.UUID] = field(default_factory=list)
    settled: list[uuid.UUID] = field(default_factory=list)


def sweep_offline_machines(
    session: Session, gateway: PrefectGateway, now: datetime | None = None
) -> SweepReport:
    """One pass over jobs sitting on machines that no longer run them.

    - machine offline (no heartbeat within the org's `machines.offline_after_s`): the run
      is crashed in Prefect (nobody is left to report it) and the job ends `crashed`;
    - machine removed, rejected, or its owner left: the run is cancelled in Prefect (the
      agent, if alive, stops it); if it is still not over after `REVOKE_GRACE`, it is
      forced to `Cancelled` (its agent can no longer tell Prefect).

    The ledger takes Prefect's answer (a run that finished just before keeps its real
    outcome), which frees the job's slot. Bounded per call; Prefect is called with no
    database lock held. The dispatcher calls this once per cycle.
    """
    now = now or utcnow()
    # Only candidates: the machine is gone, not approved, or silent for longer than the
    # shortest offline setting allowed; the exact per-org threshold is applied below.
    # Silent-longest first, so a busy healthy fleet never crowds an offline one out.
    silent_since = now - timedelta(seconds=registry.MIN_OFFLINE_AFTER_S)
    rows = session.execute(
        select(Job, Machine, Organization)
        .join(Organization, Organization.id == Job.org_id)
        .outerjoin(Machine, Machine.id == Job.machine_id)
        .where(
            Job.machine_id.is_not(None),
            Job.state.in_(_ON_A_MACHINE),
            or_(
                Machine.id.is_(None),
                Machine.status != registry.MachineStatus.approved.value,
                Machine.last_heartbeat_at.is_(None),
                Machine.last_heartbeat_at < silent_since,
            ),
        )
        .order_by(Machine.last_heartbeat_at.is_not(None), Machine.last_heartbeat_at, Job.id)
        .limit(SWEEP_BATCH)
    ).all()
    to_crash: dict[uuid.UUID, str] = {}
    to_cancel: dict[uuid.UUID, str] = {}
    to_force: dict[uuid.UUID, str] = {}
    offline_after: dict[uuid.UUID, int] = {}
    for job, machine, org in rows:
        if job.flow_run_id is None:
            continue
        if org.id not in offline_after:
            offline_after[org.id] = settings_doc.load(org.settings).machines.offline_after_s
        revoked = machine is None or machine.status != registry.MachineStatus.approved
        if revoked:
            asked = job.cancel_requested_at or now
            reason = job.reason or "The machine stopped taking work."
            if now - asked >= REVOKE_GRACE:
                # Its agent has stopped the process by now (or is gone), and it can no
                # longer tell Prefect: its credential died with the machine.
                to_force[job.id] = reason
            else:
                to_cancel[job.id] = reason
            continue
        limit = offline_after[org.id]
        if registry.health_of(machine, limit, now) is registry.Health.offline:
            to_crash[job.id] = (
                f"Machine '{machine.name}' went offline (no heartbeat for more than "
                f"{limit} s) while running this job."
            )
    jobs = {job.id: job for job, _m, _o in rows}
    session.commit()  # no lock is held while Prefect answers
    report = SweepReport()
    outcomes: dict[uuid.UUID, StateType] = {}
    for job_id, reason in to_crash.items():
        run_id = jobs[job_id].flow_run_id
        assert run_id is not None
        try:
            outcomes[job_id] = gateway.crash_flow_run(run_id, reason).state_type
            report.crashed.append(job_id)
        except Exception:
            log.warning("could not crash run %s of an offline machine", run_id, exc_info=True)
    for job_id, reason in [*to_cancel.items(), *to_force.items()]:
        run_id = jobs[job_id].flow_run_id
        assert run_id is not None
        cancel = gateway.force_cancel_flow_run if job_id in to_force else gateway.cancel_flow_run
        try:
            outcomes[job_id] = cancel(run_id, reason).state_type
            report.cancelled.append(job_id)
        except Exception:
            log.warning("could not cancel run %s of a revoked machine", run_id, exc_info=True)
    report.settled = _settle(session, jobs, outcomes, to_crash, now)
    return report


def _settle(
    session: Session,
    jobs: dict[uuid.UUID, Job],
    outcomes: dict[uuid.UUID, StateType],
    reasons: dict[uuid.UUID, str],
    now: datetime,
) -> list[uuid.UUID]:
    """Write final Prefect outcomes into the ledger (only jobs still on a machine)."""
    settled: list[uuid.UUID] = []
    for job_id, state_type in outcomes.items():
        event = PREFECT_END_EVENTS.get(state_type.value)
        if event is None:
            continue
        job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).first()
        if job is None or job.state not in _ON_A_MACHINE:
            continue  # the dispatcher's reconciler got there first
        reason = reasons.get(job_id) if state_type is StateType.CRASHED else None
        ledger.apply(
            session, job, event, reason=reason, prefect_state=state_type.value, ended_at=now
        )
        settled.append(job_id)
    session.commit()
    return settled


def reconcile_heartbeat(
    session: Session,
    gateway: PrefectGateway,
    machine: Machine,
    running: Collection[uuid.UUID],
    now: datetime | None = None,
) -> list[uuid.UUID]:
    """Runs the ledger puts on `machine` that its agent no longer has: crash them.

    This catches an agent that was killed and restarted before it went offline (its
    processes died with it). A run that simply finished is final in Prefect already and
    keeps its outcome. Returns the jobs settled.
    """
    now = now or utcnow()
    lost = session.scalars(
        select(Job).where(
            Job.machine_id == machine.id,
            Job.state == RUNNING,
            Job.claimed_at < now - HEARTBEAT_GRACE,
            Job.flow_run_id.is_not(None),
        )
    ).all()
    lost = [job for job in lost if job.flow_run_id not in running]
    jobs = {job.id: job for job in lost}
    session.commit()
    if not jobs:
        return []
    reason = (
        f"The agent on machine '{machine.name}' restarted and no longer runs this job "
        "(it was stopped with its previous agent)."
    )
    outcomes: dict[uuid.UUID, StateType] = {}
    for job in lost:
        assert job.flow_run_id is not None
        try:
            outcomes[job.id] = gateway.crash_flow_run(job.flow_run_id, reason).state_type
        except Exception:
            log.warning("could not crash lost run %s", job.flow_run_id, exc_info=True)
    return _settle(session, jobs, outcomes, dict.fromkeys(jobs, reason), now)
