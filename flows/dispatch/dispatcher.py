"""The dispatcher: keeps the job ledger and Prefect in step, and releases held jobs.

One loop per control plane; among replicas only the holder of the `dispatcher` lease
(table `leases`, renewed every cycle, bounded TTL) works, the others wait. Correctness
does not depend on the lease: every release decision is taken under the organization's
admission lock, and every Prefect call is idempotent, so two dispatchers overlapping
for a moment (a lease handed over mid-cycle) cannot break a limit or double anything.

Each cycle does bounded work, in this order:

1. **reconcile**: read the runs of up to `batch` held/active jobs from Prefect (one
   filter call per 200) and map their states onto ours (running, completed, failed,
   crashed, cancelled, rejected) with timings; repair drift (a scheduled job whose run
   is still held is released again; a held job whose run was released by hand is held
   again; a cancelling job whose run is not stopping is cancelled again);
2. **create missing runs** of jobs committed while Prefect was down (same idempotency
   key as the submission: at most one run per job);
3. **settle** final jobs whose run Prefect has not ended yet (cancelled while held,
   rejected), and the Prefect outbox (work left by deleted orgs and members);
4. **release** held jobs, per organization under its lock: highest priority first;
   within a priority, round-robin over users by least recently served (the latest
   `released_at` per user), each release re-checked by `policies.admission` with
   `for_release=True` and the job itself excluded from the counts. The ledger commits
   first, Prefect is told after; a crash in between leaves a scheduled job with a held
   run, which step 1 releases again (restart-safe, never released twice in the ledger);
5. **adopt** runs of our deployments that no job knows (made by a Prefect schedule, in
   the UI, or through the API directly) shortly before they are due: attributed to the
   schedule's creator (or a member named by a `user:` tag), admitted like a
   submission: accepted -> a scheduled job; over a limit -> held in Prefect with the
   reason; refused -> `Rejected` in Prefect with the reason.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flows import claims, ledger
from flows.dispatch import leases
from flows.dispatch.service import Service
from flows.gateway import (
    REJECTED_STATE_NAME,
    FlowRunInfo,
    PrefectGateway,
    RunCreator,
    StateType,
    run_tags,
)
from flows.jobs import (
    SCHEDULED_FOR_KEY,
    SETTLED_PREFECT_STATES,
    ensure_flow_run,
    job_variables_for,
    scheduled_time_of,
)
from flows.models import (
    ACTIVE_STATES,
    CANCELLED,
    CANCELLING,
    FAILED,
    FINAL_STATES,
    HELD,
    REJECTED,
    SCHEDULED,
    Deployment,
    Job,
    PrefectTask,
    Schedule,
)
from flows.schedule_kinds import fires, spec_of
from flows.usage import REQUESTED_KEY, admission_snapshot, job_request_for
from orgs import metrics
from orgs.config import Settings
from orgs.db import Database, utcnow
from orgs.models import Machine, Membership, Organization, User
from policies.admission import Accept, Hold, JobRequest, Reject, decide
from policies.errors import DomainError, Unavailable
from policies.job_states import PREFECT_END_EVENTS, JobEvent, Verdict, rule_for
from policies.permissions import Role

log = logging.getLogger(__name__)

LEASE_NAME: Final = "dispatcher"
_LIVE_RUN_STATES: Final = (StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING)
_ADOPT_PAGES: Final = 5
_SETTLE_WINDOW: Final = timedelta(days=7)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Agent heartbeats a deleted organization's pools are kept for (see _drain_outbox).
_POOL_GRACE_HEARTBEATS: Final = 3


# ------------------------------------------------------------- state mapping (pure)


Action = Literal["none", "release", "hold", "cancel"]


@dataclass(frozen=True)
class Sync:
    """What reconciling one job against its run does: the ledger event Prefect's state
    amounts to (None: nothing), the state it leads to (None: unchanged), and at most one
    Prefect call to make after the commit."""

    prefect_state: str
    event: JobEvent | None = None
    state: str | None = None
    reason: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    action: Action = "none"


def _sync(job_state: str, prefect_state: str, event: JobEvent | None, **kw: Any) -> Sync:
    state = None
    if event is not None:
        rule = rule_for(job_state, event)
        state = rule.target.value if rule.verdict is Verdict.move else None
    return Sync(prefect_state=prefect_state, event=event, state=state, **kw)


def sync_job(job_state: str, run: FlowRunInfo | None, now: datetime) -> Sync:
    """Map a run's Prefect state onto a held or active job (see the module docstring)."""
    if run is None:
        return _sync(
            job_state,
            "DELETED",
            JobEvent.observe_cancelled,
            reason="Its Prefect run was deleted (with its deployment, or Prefect replaced "
            "a scheduled run when the deployment was updated).",
            ended_at=now,
        )
    st = run.state_type
    if st.is_final:
        event = PREFECT_END_EVENTS[st.value]
        if st is StateType.CANCELLED and run.state_name == REJECTED_STATE_NAME:
            event = JobEvent.observe_rejected
        reason = None
        if event not in (JobEvent.observe_completed, JobEvent.observe_cancelled) or (
            event is JobEvent.observe_cancelled and job_state != CANCELLING
        ):
            reason = run.message or f"Prefect ended the run {run.state_name or st.value}."
        return _sync(
            job_state,
            st.value,
            event,
            reason=reason,
            started_at=run.start_time,
            ended_at=run.end_time or now,
        )
    if job_state == CANCELLING:
        # Keep asking until Prefect is stopping it (idempotent on Prefect's side).
        action: Action = "none" if st is StateType.CANCELLING else "cancel"
        return Sync(prefect_state=st.value, started_at=run.start_time, action=action)
    if st is StateType.CANCELLING:
        return _sync(job_state, st.value, JobEvent.observe_cancelling, started_at=run.start_time)
    if st in (StateType.RUNNING, StateType.PAUSED):
        return _sync(job_state, st.value, JobEvent.observe_running, started_at=run.start_time)
    if st is StateType.PENDING:
        # A worker took it; a held job released by hand now holds a slot for real.
        pending = JobEvent.observe_pending if job_state == HELD else None
        return _sync(job_state, st.value, pending)
    # SCHEDULED
    if run.is_held and job_state == SCHEDULED:
        return Sync(prefect_state=st.value, action="release")
    if not run.is_held and job_state == HELD:
        return Sync(prefect_state=st.value, action="hold")
    return Sync(prefect_state=st.value)


# ------------------------------------------------------------------- fair order (pure)


@dataclass
class ReleaseQueue:
    """Held jobs of one org in release order: priority tiers, highest first; within a
    tier, the least recently served user next (ties by user id), each user's oldest job
    first. ``served`` / ``block_*`` update the order as releases happen."""

    jobs: Sequence[Job]
    last_served: dict[uuid.UUID, datetime]
    _tiers: dict[int, dict[uuid.UUID, deque[Job]]] = field(init=False)
    _blocked_users: set[uuid.UUID] = field(init=False, default_factory=set)
    _blocked_types: set[str] = field(init=False, default_factory=set)
    _tick: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._tiers = defaultdict(dict)
        ordered = sorted(self.jobs, key=lambda j: (-j.priority, j.created_at, j.id))
        for job in ordered:
            self._tiers[job.priority].setdefault(job.user_id, deque()).append(job)

    def next(self) -> Job | None:
        for priority in sorted(self._tiers, reverse=True):
            users = [
                u
                for u, q in self._tiers[priority].items()
                if q
                and u not in self._blocked_users
                and q[0].machine_type not in self._blocked_types
            ]
            if users:
                user = min(users, key=lambda u: (self.last_served.get(u, _EPOCH), str(u)))
                return self._tiers[priority][user].popleft()
        return None

    def served(self, job: Job, when: datetime) -> None:
        # Strictly increasing, so users released in one cycle keep their turn order.
        self._tick += 1
        self.last_served[job.user_id] = when + timedelta(microseconds=self._tick)

    def block_user(self, user_id: uuid.UUID) -> None:
        self._blocked_users.add(user_id)

    def block_type(self, machine_type: str) -> None:
        self._blocked_types.add(machine_type)


# ------------------------------------------------------------------------- report


@dataclass
class CycleReport:
    reconciled: int = 0
    state_changes: int = 0
    runs_created: int = 0
    settled: int = 0
    released: int = 0
    rejected: int = 0
    adopted: int = 0
    fired: int = 0
    errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- dispatcher


class Dispatcher(Service):
    def __init__(
        self,
        db: Database,
        gateway: PrefectGateway,
        settings: Settings,
        *,
        holder: str | None = None,
    ) -> None:
        super().__init__(
            "dispatcher",
            max(0.05, settings.dispatcher_interval_s),
            enabled=settings.dispatcher_enabled,
            stop_timeout_s=30.0,
        )
        self.db = db
        self.gateway = gateway
        self.settings = settings
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.batch = max(1, settings.dispatcher_batch_size)
        # Keyset cursor over held/active jobs, so a big ledger is walked batch by batch.
        self._cursor: uuid.UUID | None = None
        # Last fire time handled per schedule (an optimisation only: fires are keyed).
        self._fired: dict[uuid.UUID, datetime] = {}

    # -- lifecycle -------------------------------------------------------------------

    # The loop itself (thread, interval, backoff, health) is orgs.service.Service's.

    def should_run(self) -> bool:
        return self.acquire_lease()

    def on_stopped(self) -> None:
        # Shutting down: a failure is only logged, the lease expires by itself anyway.
        self.release_lease()

    # -- lease -----------------------------------------------------------------------

    def acquire_lease(self) -> bool:
        """Take or renew the lease; False while another live holder has it."""
        return leases.acquire(
            self.db, LEASE_NAME, self.holder, self.settings.dispatcher_lease_ttl_s
        )

    def release_lease(self) -> None:
        leases.release(self.db, LEASE_NAME, self.holder)

    # -- one cycle -------------------------------------------------------------------

    def run_once(self) -> CycleReport:
        """One bounded cycle of every step; a step Prefect fails is retried next cycle."""
        report = CycleReport()
        steps = (
            self.reconcile,
            self.sweep_machines,
            self.fire_schedules,
            self.create_missing_runs,
            self.settle,
            self.release_held,
            self.adopt,
        )
        for step in steps:
            try:
                step(report)
            except Unavailable as exc:
                report.errors.append(f"{step.__name__}: {exc.detail}")
                log.warning("dispatcher %s: Prefect unavailable: %s", step.__name__, exc.detail)
        return report

    # -- 1b. machines (issue 4) -------------------------------------------------------

    def sweep_machines(self, report: CycleReport) -> None:
        """Crash the runs of machines gone offline, cancel those of removed or rejected
        machines (flows.claims), so their slots come back in this same cycle."""
        with self.db.session() as s:
            swept = claims.sweep_offline_machines(s, self.gateway)
        report.state_changes += len(swept.settled)

    # -- 1. reconcile ----------------------------------------------------------------

    def reconcile(self, report: CycleReport) -> None:
        with self.db.session(write=False) as s:
            stmt = (
                select(Job.id, Job.flow_run_id)
                .where(
                    Job.state.in_(tuple(ACTIVE_STATES | {HELD})),
                    Job.flow_run_id.is_not(None),
                )
                .order_by(Job.id)
                .limit(self.batch)
            )
            if self._cursor is not None:
                stmt = stmt.where(Job.id > self._cursor)
            rows = s.execute(stmt).all()
        self._cursor = rows[-1][0] if len(rows) == self.batch else None
        if not rows:
            return
        run_ids = [rid for _, rid in rows if rid is not None]
        runs = {run.id: run for run in self.gateway.read_flow_runs(run_ids)}
        now = utcnow()
        followups: list[tuple[Action, Job, str]] = []
        with self.db.transaction() as s:
            # Row locks (PostgreSQL; in id order, so dispatchers cannot deadlock): a
            # cancel committed meanwhile is seen here, never overwritten.
            jobs = s.scalars(
                select(Job)
                .where(Job.id.in_([jid for jid, _ in rows]))
                .order_by(Job.id)
                .with_for_update()
            ).all()
            for job in jobs:
                if job.state not in ACTIVE_STATES and job.state != HELD:
                    continue  # changed since we read it
                assert job.flow_run_id is not None
                sync = sync_job(job.state, runs.get(job.flow_run_id), now)
                report.reconciled += 1
                if self._apply(s, job, sync, now):
                    report.state_changes += 1
                if sync.action != "none":
                    followups.append((sync.action, job, job.reason))
        for action, job, reason in followups:
            self._act(action, job, reason)

    @staticmethod
    def _apply(s: Session, job: Job, sync: Sync, now: datetime) -> bool:
        changed = job.prefect_state != sync.prefect_state
        if sync.event is None:
            ledger.record_prefect(job, sync.prefect_state, started_at=sync.started_at)
            return changed
        moved = ledger.apply(
            s,
            job,
            sync.event,
            reason=sync.reason,
            prefect_state=sync.prefect_state,
            started_at=sync.started_at,
            ended_at=sync.ended_at,
            at=now,
        ).moved
        return changed or moved

    def _act(self, action: Action, job: Job, reason: str) -> None:
        assert job.flow_run_id is not None
        try:
            if action == "release":
                self.gateway.release_flow_run(job.flow_run_id)
            elif action == "hold":
                self.gateway.hold_flow_run(job.flow_run_id, reason or "Waiting for a slot.")
            elif action == "cancel":
                self.gateway.cancel_flow_run(job.flow_run_id, reason or None)
        except Unavailable:
            raise
        except DomainError as exc:
            log.warning("dispatcher: %s of run %s failed: %s", action, job.flow_run_id, exc)

    # -- 1c. schedules ----------------------------------------------------------------

    def fire_schedules(self, report: CycleReport) -> None:
        """Turn due schedule fires into jobs of the schedule's owner (control-plane mode).

        A fire is a submission: admitted under the org lock, held or rejected with the
        reason. Its key `schedule:<id>:<time>` makes it happen once, whatever the number
        of dispatchers or restarts; fires missed by more than a minute are skipped.
        """
        if self.settings.schedules_backend != "control-plane":
            return
        now = utcnow()
        until = now + timedelta(seconds=self.settings.dispatcher_adopt_horizon_s)
        with self.db.session(write=False) as s:
            rows = s.execute(
                select(Schedule, Deployment)
                .join(Deployment, Deployment.id == Schedule.deployment_id)
                .where(Schedule.active)
            ).all()
        for sched, dep in rows:
            since = self._fired.get(sched.id) or max(sched.created_at, now - timedelta(seconds=60))
            for fire in fires(spec_of(sched), since, until, limit=5):
                job = self._fire(sched, dep, fire)
                self._fired[sched.id] = fire
                if job is None:
                    continue
                report.fired += 1
                with self.db.session() as s:
                    ensure_flow_run(s, self.gateway, job)

    def _fire(self, sched: Schedule, dep: Deployment, fire: datetime) -> Job | None:
        now = utcnow()
        key = f"schedule:{sched.id}:{fire.isoformat()}"
        with self.db.transaction() as s:
            org = s.get(Organization, sched.org_id)
            owner = s.get(User, sched.user_id)
            if org is None or owner is None:
                return None
            role = _roles(s, org.id, {owner.id}).get(owner.id)
            request = JobRequest(machine_type=dep.machine_type)
            snapshot = admission_snapshot(
                s, org, owner.id, role, request, lock=True, deployment_id=dep.id
            )
            if s.scalar(
                select(Job.id).where(
                    Job.org_id == org.id, Job.user_id == owner.id, Job.idempotency_key == key
                )
            ):
                return None  # fired already (another dispatcher, or before a restart)
            decision = decide(snapshot)
            limits = snapshot.limits.limits
            job = ledger.create(
                s,
                ledger.event_for(decision),
                actor=owner,
                decision=decision,
                at=now,
                audit_after={
                    "deployment": dep.name,
                    "schedule_id": str(sched.id),
                    "scheduled_for": fire.isoformat(),
                },
                org_id=org.id,
                user_id=owner.id,
                deployment_id=dep.id,
                schedule_id=sched.id,
                source="schedule",
                machine_type=dep.machine_type,
                parameters=dict(sched.parameters or {}),
                code=dep.code,
                memory_mb=limits.max_job_memory,
                max_runtime_s=limits.max_job_runtime,
                priority=0,
                tags=[f"schedule:{sched.id}"],
                inputs=[],
                job_metadata={
                    REQUESTED_KEY: {"memory_mb": None, "max_runtime_s": None},
                    SCHEDULED_FOR_KEY: fire.isoformat(),
                },
                idempotency_key=key,
            ).job
            try:
                s.flush()
            except IntegrityError:
                s.rollback()
                return None
        metrics.record_decision(decision)
        return job

    # -- 2. missing runs -------------------------------------------------------------

    def create_missing_runs(self, report: CycleReport) -> None:
        now = utcnow()
        cutoff = now - timedelta(seconds=self.settings.dispatcher_create_grace_s)
        with self.db.session(write=False) as s:
            # Cancelled before a run ever existed: nothing for Prefect to stop.
            orphans = s.scalars(
                select(Job.id)
                .where(Job.state == CANCELLING, Job.flow_run_id.is_(None))
                .limit(self.batch)
            ).all()
        if orphans:
            with self.db.transaction() as s:
                for orphan in s.scalars(
                    select(Job)
                    .where(Job.id.in_(orphans), Job.flow_run_id.is_(None))
                    .order_by(Job.id)
                    .with_for_update()
                ):
                    ledger.apply(s, orphan, JobEvent.cancel, at=now)
        with self.db.session(write=False) as s:
            ids = s.scalars(
                select(Job.id)
                .where(
                    Job.flow_run_id.is_(None),
                    Job.state.in_((HELD, SCHEDULED)),
                    Job.created_at < cutoff,
                )
                .order_by(Job.created_at)
                .limit(self.batch)
            ).all()
        for job_id in ids:
            with self.db.session() as s:
                job = s.get(Job, job_id)
                if job is None:
                    continue
                ref = ensure_flow_run(s, self.gateway, job)
                if ref is None and job.flow_run_id is None and job.state in (HELD, SCHEDULED):
                    s.refresh(job)
                    if job.state in (HELD, SCHEDULED):
                        # Prefect still down: the rest waits for the next cycle.
                        raise Unavailable("Prefect did not accept a missing run; retrying later.")
                if ref is not None:
                    report.runs_created += 1

    # -- 3. settle -------------------------------------------------------------------

    def settle(self, report: CycleReport) -> None:
        """Final jobs whose run Prefect still has live; then the outbox."""
        since = utcnow() - _SETTLE_WINDOW
        with self.db.session(write=False) as s:
            rows = s.execute(
                select(Job.id, Job.flow_run_id, Job.state, Job.reason)
                .where(
                    Job.state.in_(tuple(FINAL_STATES)),
                    Job.updated_at >= since,
                    Job.flow_run_id.is_not(None),
                    Job.prefect_state.not_in(tuple(SETTLED_PREFECT_STATES)),
                )
                .limit(self.batch)
            ).all()
        for job_id, run_id, state, reason in rows:
            assert run_id is not None
            try:
                if state == REJECTED:
                    ref = self.gateway.reject_flow_run(run_id, reason or "Rejected.")
                elif state in (CANCELLED, FAILED):
                    ref = self.gateway.cancel_flow_run(run_id, reason or None)
                else:  # completed/crashed per our ledger: just record what Prefect says
                    ref = self.gateway.read_flow_run(run_id).ref()
                prefect_state = ref.state_type.value
            except Unavailable:
                raise
            except DomainError:  # e.g. the run no longer exists in Prefect
                prefect_state = "DELETED"
            with self.db.transaction() as s:
                s.execute(update(Job).where(Job.id == job_id).values(prefect_state=prefect_state))
            report.settled += 1
        self._drain_outbox(report)

    def _drain_outbox(self, report: CycleReport) -> None:
        # A deleted org's agents may still be running for a few heartbeats, and an agent
        # of ours creates its pool when it finds none: pools go once they have stopped.
        settled_at = utcnow() - timedelta(seconds=_POOL_GRACE_HEARTBEATS * self._heartbeat_s)
        with self.db.session(write=False) as s:
            tasks = s.scalars(
                select(PrefectTask)
                .where(
                    or_(
                        PrefectTask.kind != "delete_work_pool",
                        PrefectTask.created_at <= settled_at,
                    )
                )
                .order_by(PrefectTask.id)
                .limit(self.batch)
            ).all()
        for task in tasks:
            try:
                if task.kind == "delete_deployment":
                    self.gateway.delete_deployment(task.target_id)
                elif task.kind == "cancel_run":
                    self.gateway.cancel_flow_run(task.target_id, task.reason or None)
                elif task.kind == "force_cancel_run":
                    self.gateway.force_cancel_flow_run(task.target_id, task.reason or "Cancelled.")
                elif task.kind == "delete_schedule" and task.deployment_id is not None:
                    self.gateway.delete_deployment_schedule(task.deployment_id, task.target_id)
                elif task.kind == "delete_work_pool" and task.target_name:
                    with self.db.session(write=False) as s:
                        taken = _pool_in_use(s, task.target_name)
                    if taken:  # the slug was taken again since: the pool is theirs now
                        log.info("outbox: work pool %s kept, in use again", task.target_name)
                    else:
                        self.gateway.delete_work_pool(task.target_name)
            except Unavailable:
                raise
            except DomainError as exc:  # gone already, or refused: nothing left to do
                log.info("outbox task %s (%s) dropped: %s", task.id, task.kind, exc.detail)
            with self.db.transaction() as s:
                s.execute(delete(PrefectTask).where(PrefectTask.id == task.id))
            report.settled += 1

    @property
    def _heartbeat_s(self) -> float:
        return max(0.0, self.settings.agent_heartbeat_interval_s)

    # -- 4. release ------------------------------------------------------------------

    def release_held(self, report: CycleReport) -> None:
        with self.db.session(write=False) as s:
            org_ids = s.scalars(select(Job.org_id).where(Job.state == HELD).distinct()).all()
        for org_id in org_ids:
            self._release_org(org_id, report)

    def _release_org(self, org_id: uuid.UUID, report: CycleReport) -> None:
        released: list[tuple[ledger.Transition, bool]] = []
        rejected: list[Job] = []
        now = utcnow()
        with self.db.transaction() as s:
            org = s.get(Organization, org_id)
            if org is None:
                return
            # Take the org's admission lock before reading the queue.
            s.execute(select(Organization.id).where(Organization.id == org_id).with_for_update())
            held = list(
                s.scalars(
                    select(Job)
                    .where(Job.org_id == org_id, Job.state == HELD)
                    .order_by(Job.priority.desc(), Job.created_at, Job.id)
                    .limit(self.batch * 10)
                    .with_for_update()
                )
            )
            # A schedule's fire waits for its time even when a slot is free.
            held = [j for j in held if (scheduled_time_of(j) or now) <= now]
            if not held:
                return
            users = {j.user_id for j in held}
            roles = _roles(s, org_id, users)
            queue = ReleaseQueue(held, _last_served(s, org_id, users))
            while (job := queue.next()) is not None:
                request = job_request_for(job, deployment_known=job.deployment_id is not None)
                snapshot = admission_snapshot(
                    s,
                    org,
                    job.user_id,
                    roles.get(job.user_id),
                    request,
                    exclude_job_id=job.id,
                    for_release=True,
                    lock=True,
                    deployment_id=job.deployment_id,
                )
                decision = decide(snapshot)
                if isinstance(decision, Accept):
                    changed = (decision.memory_mb, decision.max_runtime_s) != (
                        job.memory_mb,
                        job.max_runtime_s,
                    )
                    done = ledger.apply(s, job, JobEvent.release, decision=decision, at=now)
                    queue.served(job, now)
                    released.append((done, changed))
                elif isinstance(decision, Hold):
                    if (job.rule, job.reason) != (decision.rule, decision.reason):
                        ledger.apply(s, job, JobEvent.hold, decision=decision, at=now)
                    if decision.rule == "type_scale":
                        queue.block_type(job.machine_type)
                    elif decision.rule == "deployment_concurrency":
                        pass  # only this deployment is full: the user's others may go
                    else:
                        queue.block_user(job.user_id)
                else:
                    ledger.apply(s, job, JobEvent.reject, decision=decision, at=now)
                    rejected.append(job)
        report.released += len(released)
        report.rejected += len(rejected)
        for done, _changed in released:
            metrics.observe_dispatch_latency((now - done.job.created_at).total_seconds())
        for done, resources_changed in released:
            if resources_changed and done.job.flow_run_id is not None:
                try:
                    self._refresh_job_variables(done.job)
                except DomainError as exc:  # the worker reads them again at claim
                    log.info("job variables of %s not refreshed: %s", done.job.id, exc.detail)
        # Runs not made yet (create_missing_runs makes them released) are skipped;
        # what fails here the reconciler releases again.
        ledger.tell_prefect(self.gateway, [done for done, _ in released])
        for job in rejected:
            if job.flow_run_id is not None:
                try:
                    ref = self.gateway.reject_flow_run(job.flow_run_id, job.reason)
                except DomainError:
                    continue  # settle() retries
                with self.db.transaction() as s:
                    s.execute(
                        update(Job)
                        .where(Job.id == job.id)
                        .values(prefect_state=ref.state_type.value)
                    )

    def _refresh_job_variables(self, job: Job) -> None:
        # The limits changed while the job waited: the worker must enforce the new ones.
        with self.db.session(write=False) as s:
            dep = s.get(Deployment, job.deployment_id) if job.deployment_id else None
        if dep is not None and job.flow_run_id is not None:
            self.gateway.update_flow_run(job.flow_run_id, job_variables=job_variables_for(dep, job))

    # -- 5. adopt --------------------------------------------------------------------

    def adopt(self, report: CycleReport) -> None:
        with self.db.session(write=False) as s:
            deps = {
                d.prefect_deployment_id: d
                for d in s.scalars(
                    select(Deployment).where(Deployment.prefect_deployment_id.is_not(None))
                )
            }
            schedules = {
                sc.prefect_schedule_id: sc
                for sc in s.scalars(
                    select(Schedule).where(Schedule.prefect_schedule_id.is_not(None))
                )
            }
        if not deps:
            return
        horizon = utcnow() + timedelta(seconds=self.settings.dispatcher_adopt_horizon_s)
        dep_ids = [d for d in deps if d is not None]
        for start in range(0, len(dep_ids), 200):
            chunk = dep_ids[start : start + 200]
            for page in range(_ADOPT_PAGES):
                found = self.gateway.read_runs_of_deployments(
                    chunk,
                    state_types=_LIVE_RUN_STATES,
                    expected_before=horizon,
                    limit=200,
                    offset=page * 200,
                )
                unknown = self._unknown(found)
                for run, creator in unknown:
                    dep = deps.get(run.deployment_id)
                    if dep is not None:
                        self._adopt_one(run, creator, dep, schedules, report)
                if len(found) < 200:
                    break

    def _unknown(
        self, found: Sequence[tuple[FlowRunInfo, RunCreator]]
    ) -> list[tuple[FlowRunInfo, RunCreator]]:
        """Runs neither in the ledger nor created for a job (key = job id)."""
        if not found:
            return []
        run_ids = [run.id for run, _ in found]
        keys = [_as_uuid(run.idempotency_key) for run, _ in found]
        job_keys = [k for k in keys if k is not None]
        with self.db.session(write=False) as s:
            known = set(s.scalars(select(Job.flow_run_id).where(Job.flow_run_id.in_(run_ids))))
            known_jobs = (
                set(s.scalars(select(Job.id).where(Job.id.in_(job_keys)))) if job_keys else set()
            )
        return [
            (run, creator)
            for run, creator in found
            if run.id not in known and _as_uuid(run.idempotency_key) not in known_jobs
        ]

    def _adopt_one(
        self,
        run: FlowRunInfo,
        creator: RunCreator,
        dep: Deployment,
        schedules: dict[uuid.UUID | None, Schedule],
        report: CycleReport,
    ) -> None:
        schedule = schedules.get(creator.id) if creator.type == "SCHEDULE" else None
        if schedule is not None and self.settings.schedules_backend == "control-plane":
            # The dispatcher fires this schedule itself; Prefect's run would double it.
            self._reject_run(
                run,
                "Compute Share creates this schedule's runs itself; its Prefect schedule "
                "must stay inactive (use `cshare schedule pause/resume`).",
            )
            report.rejected += 1
            return
        with self.db.transaction() as s:
            org = s.get(Organization, dep.org_id)
            if org is None:
                return
            # Identity from the ledger: only the org's own schedules count, never tags.
            user_id = schedule.user_id if schedule is not None else None
            if user_id is None and creator.type == "SCHEDULE" and creator.id is not None:
                # A schedule of ours whose row is gone (its creator left): remove it.
                s.add(
                    PrefectTask(
                        kind="delete_schedule",
                        target_id=creator.id,
                        deployment_id=run.deployment_id,
                        reason="Schedule unknown to Compute Share.",
                    )
                )
            job = (
                None
                if user_id is None
                else self._admit_adopted(s, org, dep, run, user_id, schedule)
            )
            user = s.get(User, user_id) if user_id is not None else None
            slug = org.slug
        if user_id is not None and job is None:
            return  # another dispatcher adopted it first
        if job is None:
            # Not created or admitted by Compute Share: it must not run.
            self._reject_run(run, claims.NOT_ADMITTED)
            report.rejected += 1
            return
        report.adopted += 1
        user_name = user.name if user is not None else "unknown"
        try:
            if job.state == HELD:
                self.gateway.hold_flow_run(run.id, job.reason)
            elif job.state == REJECTED:
                self._reject_run(run, job.reason)
                report.rejected += 1
            if job.state in (HELD, SCHEDULED) and run.state_type is StateType.SCHEDULED:
                tags = [*run.tags, *run_tags(slug, user_name, job.machine_type)]
                if schedule is not None:
                    tags.append(f"schedule:{schedule.id}")
                self.gateway.update_flow_run(
                    run.id,
                    tags=list(dict.fromkeys(tags)),
                    job_variables=job_variables_for(dep, job),
                )
        except Unavailable:
            raise
        except DomainError as exc:  # reconcile / settle repeat what matters
            log.info("adopted run %s: follow-up deferred: %s", run.id, exc.detail)

    def _admit_adopted(
        self,
        s: Session,
        org: Organization,
        dep: Deployment,
        run: FlowRunInfo,
        user_id: uuid.UUID,
        schedule: Schedule | None,
    ) -> Job | None:
        """The job row for an adopted run, admitted like a submission (in `s`)."""
        now = utcnow()
        role = _roles(s, org.id, {user_id}).get(user_id)
        request = JobRequest(machine_type=dep.machine_type)
        snapshot = admission_snapshot(
            s, org, user_id, role, request, lock=True, deployment_id=dep.id
        )
        decision = decide(snapshot)
        started = run.state_type is StateType.RUNNING
        if isinstance(decision, Hold) and started:
            # Already running over a limit: it cannot wait any more, so it stops.
            decision = Reject(decision.rule, decision.reason)
        limits = snapshot.limits.limits
        event = ledger.event_for(decision)
        if started and event is JobEvent.accept:
            event = JobEvent.observe_running
        job = ledger.create(
            s,
            event,
            actor=None,
            audit_action="job.adopted",
            decision=decision,
            at=now,
            audit_after={
                "flow_run_id": str(run.id),
                "source": "schedule" if schedule is not None else "prefect",
                "schedule_id": str(schedule.id) if schedule else None,
                "user_id": str(user_id),
            },
            org_id=org.id,
            user_id=user_id,
            deployment_id=dep.id,
            schedule_id=schedule.id if schedule is not None else None,
            source="schedule" if schedule is not None else "prefect",
            machine_type=dep.machine_type,
            parameters=dict(run.parameters),
            code=dep.code,
            memory_mb=limits.max_job_memory,
            max_runtime_s=limits.max_job_runtime,
            priority=0,
            tags=[],
            inputs=[],
            job_metadata={
                REQUESTED_KEY: {"memory_mb": None, "max_runtime_s": None},
                "adopted_run": run.name,
            },
            flow_run_id=run.id,
            prefect_state=run.state_type.value,
        ).job
        try:
            s.flush()
        except IntegrityError:  # another dispatcher adopted it first
            s.rollback()
            return None
        return job

    def _reject_run(self, run: FlowRunInfo, reason: str) -> None:
        try:
            self.gateway.reject_flow_run(run.id, reason)
        except Unavailable:
            raise
        except DomainError as exc:
            log.info("could not reject run %s: %s", run.id, exc.detail)


# ---------------------------------------------------------------------- helpers


def _pool_in_use(s: Session, pool: str) -> bool:
    """Whether a live organization owns the work pool `pool` (`<slug>-<type>`, see
    flows.gateway.work_pool_name): a slug taken again after its organization was
    deleted, with deployments or machines of that type."""
    slugs = [pool[:i] for i, char in enumerate(pool) if char == "-"]
    for org_id, slug in s.execute(
        select(Organization.id, Organization.slug).where(Organization.slug.in_(slugs))
    ):
        machine_type = pool[len(slug) + 1 :]
        for column, owner in (
            (Deployment.machine_type, Deployment.org_id),
            (Machine.machine_type, Machine.org_id),
        ):
            if s.scalar(select(column).where(owner == org_id, column == machine_type).limit(1)):
                return True
    return False


def _as_uuid(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _roles(
    s: Session, org_id: uuid.UUID, user_ids: Iterable[uuid.UUID | None]
) -> dict[uuid.UUID, Role]:
    ids = [u for u in user_ids if u is not None]
    if not ids:
        return {}
    rows = s.execute(
        select(Membership.user_id, Membership.role).where(
            Membership.org_id == org_id, Membership.user_id.in_(ids)
        )
    ).all()
    return {uid: Role(role) for uid, role in rows}


def _last_served(
    s: Session, org_id: uuid.UUID, user_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, datetime]:
    rows = s.execute(
        select(Job.user_id, func.max(Job.released_at))
        .where(Job.org_id == org_id, Job.user_id.in_(list(user_ids)), Job.released_at.is_not(None))
        .group_by(Job.user_id)
    ).all()
    out: dict[uuid.UUID, datetime] = {}
    for uid, when in rows:
        if when is not None:
            # SQLite returns MAX() of our UTC column as text or a naive datetime.
            out[uid] = _aware(when)
    return out


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
    return value  # type: ignore[no-any-return]
