"""The job ledger: the only code that creates job rows or changes a job's state, machine,
timings or outcome.

Everything else (submission, schedules, the dispatcher, the claim gate, agents' reports,
cascades) asks the ledger with an event (`policies.job_states.JobEvent`). The ledger
looks the (state, event) pair up in the pure table, changes the row, writes the audit
row and runs the transition's side effects in the caller's transaction, and returns a
`Transition` saying what happened, so callers never re-read and guess.

Side effects, all here:
- in the transaction: notifications (outbox rows), revocation of the job's credentials,
  usage metrics, the machine's slot;
- after the commit: `tell_prefect(gateway, transitions)` makes the Prefect calls a
  transition asks for (hold, release, reject, cancel). Prefect is never called while a
  row lock is held.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy.orm import Session

from flows.gateway import PrefectGateway
from flows.job_tokens import revoke_job_tokens
from flows.models import Deployment, Job
from orgs import audit, metrics, notifications
from orgs.db import utcnow
from orgs.models import Machine, Organization, User
from policies.admission import Accept, Hold, Reject
from policies.errors import DomainError
from policies.job_states import (
    TERMINAL,
    Effect,
    JobEvent,
    JobState,
    Rule,
    Verdict,
    rule_for,
)

__all__ = [
    "Transition",
    "apply",
    "create",
    "event_for",
    "record_prefect",
    "tell_prefect",
]

log = logging.getLogger(__name__)

MAX_NOTES: Final = 20
NOTES_KEY: Final = "notes"
MAX_REASON: Final = 2000


@dataclass(frozen=True, slots=True)
class Transition:
    """What one event did to one job."""

    job: Job
    event: JobEvent
    before: JobState
    after: JobState
    verdict: Verdict
    effects: frozenset[Effect]

    @property
    def moved(self) -> bool:
        return self.verdict is Verdict.move

    @property
    def accepted(self) -> bool:
        """The event took effect (a move or an allowed stay)."""
        return self.verdict in (Verdict.move, Verdict.stay)


def event_for(decision: Accept | Hold | Reject) -> JobEvent:
    """The ledger event of an admission decision."""
    if isinstance(decision, Accept):
        return JobEvent.accept
    if isinstance(decision, Hold):
        return JobEvent.hold
    return JobEvent.reject


def create(
    session: Session,
    event: JobEvent,
    *,
    actor: User | None,
    audit_after: Mapping[str, Any] | None = None,
    audit_action: str | None = None,
    machine: Machine | None = None,
    decision: Accept | Hold | Reject | None = None,
    at: datetime | None = None,
    **columns: Any,
) -> Transition:
    """A new job row, born by `event` (accept, hold, reject, claim, observe_running).

    `columns` are the job's own facts (org, user, deployment, parameters, resources...);
    its state, timings and machine come from the event. Added to `session`, not flushed.
    `audit_action` names the audit row when the job's origin matters more than its
    first state (`job.adopted` for a run created outside Compute Share).
    """
    rule = rule_for(JobState.new, event)
    if rule.verdict is not Verdict.move:
        raise ValueError(f"a job cannot be created by {event.value}")
    now = at or utcnow()
    columns.setdefault("id", uuid.uuid4())
    job = Job(state=rule.target.value, created_at=now, updated_at=now, **columns)
    _set_outcome(job, rule, event, now, decision=decision, machine=machine)
    session.add(job)
    after = {"state": job.state, "rule": job.rule or None, **(audit_after or {})}
    audit.record(
        session,
        org_id=job.org_id,
        actor=actor,
        action=audit_action or rule.audit_action,
        target_type="job",
        target_id=job.id,
        after=after,
    )
    _run_effects(session, job, rule, now)
    return Transition(job, event, JobState.new, rule.target, rule.verdict, rule.effects)


def apply(
    session: Session,
    job: Job,
    event: JobEvent,
    *,
    actor: User | None = None,
    reason: str | None = None,
    rule: str | None = None,
    decision: Accept | Hold | Reject | None = None,
    machine: Machine | None = None,
    prefect_state: str | None = None,
    started_at: datetime | None = None,
    ended_at: datetime | None = None,
    at: datetime | None = None,
    audit_after: Mapping[str, Any] | None = None,
) -> Transition:
    """Apply `event` to `job` (locked by the caller where it matters); no commit.

    `decision`: the admission decision behind accept/hold/reject/claim (its reason, rule
    and resources are recorded). `reason`/`rule` override them. A terminal job records
    the event as a note; an event its state does not allow changes nothing.
    """
    before = JobState(job.state)
    table_rule = rule_for(before, event)
    now = at or utcnow()
    if prefect_state is not None:
        job.prefect_state = prefect_state
    if started_at is not None and job.started_at is None:
        job.started_at = started_at
    if table_rule.verdict is Verdict.refuse:
        log.debug("job %s: %s refused in state %s", job.id, event.value, before.value)
        return Transition(job, event, before, before, Verdict.refuse, frozenset())
    if table_rule.verdict is Verdict.note:
        _note(job, event, reason, now)
        job.updated_at = now
        return Transition(job, event, before, before, Verdict.note, frozenset())
    if table_rule.verdict is Verdict.move:
        job.state = table_rule.target.value
    _set_outcome(
        job,
        table_rule,
        event,
        now,
        decision=decision,
        machine=machine,
        reason=reason,
        rule=rule,
        ended_at=ended_at,
    )
    job.updated_at = now
    if table_rule.audit_action:
        after = {"state": job.state, "rule": job.rule or None, **(audit_after or {})}
        _audit(session, job, table_rule, actor, before={"state": before.value}, after=after)
    if table_rule.verdict is Verdict.move:
        _run_effects(session, job, table_rule, now)
    return Transition(job, event, before, table_rule.target, table_rule.verdict, table_rule.effects)


def record_prefect(job: Job, prefect_state: str, *, started_at: datetime | None = None) -> None:
    """What Prefect says of the run when that is no event for the job (no state change)."""
    job.prefect_state = prefect_state
    if started_at is not None and job.started_at is None:
        job.started_at = started_at


def record_image(session: Session, job: Job, image: Mapping[str, Any]) -> None:
    """A container job's image as pulled, `{ref, digest}` (flows.containers). No commit."""
    job.image = dict(image)
    session.add(job)


def _set_outcome(
    job: Job,
    table_rule: Rule,
    event: JobEvent,
    now: datetime,
    *,
    decision: Accept | Hold | Reject | None = None,
    machine: Machine | None = None,
    reason: str | None = None,
    rule: str | None = None,
    ended_at: datetime | None = None,
) -> None:
    """Timings, machine, reason and resources that go with reaching `table_rule.target`."""
    target = table_rule.target
    if isinstance(decision, Accept):
        job.memory_mb, job.max_runtime_s = decision.memory_mb, decision.max_runtime_s
    if isinstance(decision, Hold | Reject):
        job.reason, job.rule = decision.reason, decision.rule
    elif table_rule.verdict is Verdict.move and target in (JobState.scheduled, JobState.running):
        job.reason, job.rule = "", ""
    if target is JobState.scheduled and table_rule.verdict is Verdict.move:
        job.released_at = now
    if event is JobEvent.claim:
        if job.released_at is None:
            job.released_at = now
        if machine is not None:
            job.machine_id = machine.id
            machine.last_job_at = now
        job.claimed_at = now
    if target is JobState.cancelling and job.cancel_requested_at is None:
        job.cancel_requested_at = now
    if target in TERMINAL and table_rule.verdict is Verdict.move:
        job.ended_at = job.ended_at or ended_at or now
        if target is not JobState.rejected and event is not JobEvent.limit_kill:
            job.rule = ""
        if event is JobEvent.cancel and job.cancel_requested_at is None:
            job.cancel_requested_at = now
    if reason is not None:
        job.reason = reason[:MAX_REASON]
    if rule is not None:
        job.rule = rule


def _note(job: Job, event: JobEvent, reason: str | None, now: datetime) -> None:
    """A late event on a terminal job: kept for people to read, never a new state."""
    meta = dict(job.job_metadata or {})
    notes = list(meta.get(NOTES_KEY) or [])
    notes.append({"at": now.isoformat(), "event": event.value, "detail": (reason or "")[:500]})
    meta[NOTES_KEY] = notes[-MAX_NOTES:]
    job.job_metadata = meta


def _audit(
    session: Session,
    job: Job,
    table_rule: Rule,
    actor: User | None,
    *,
    before: dict[str, Any] | None,
    after: dict[str, Any],
) -> None:
    if not table_rule.audit_action:
        return
    audit.record(
        session,
        org_id=job.org_id,
        actor=actor,
        action=table_rule.audit_action,
        target_type="job",
        target_id=job.id,
        before=before,
        after=after,
    )


def _run_effects(session: Session, job: Job, table_rule: Rule, now: datetime) -> None:
    effects = table_rule.effects
    if Effect.revoke_credentials in effects:
        revoke_job_tokens(session, job.id)
    if Effect.release_slot in effects and job.machine_id is not None:
        machine = session.get(Machine, job.machine_id)
        if machine is not None and machine.running_jobs:
            machine.running_jobs -= 1
    if table_rule.target in TERMINAL:
        ran = None
        if Effect.record_usage in effects and job.started_at is not None:
            ran = ((job.ended_at or now) - job.started_at).total_seconds()
        metrics.record_job_end(job.state, job.machine_type, ran)
    if Effect.notify_end in effects:
        _notify_end(session, job)


def _notify_end(session: Session, job: Job) -> None:
    event = f"job.{job.state}"
    if event not in notifications.EVENTS:
        return
    user = session.get(User, job.user_id)
    org = session.get(Organization, job.org_id)
    dep = session.get(Deployment, job.deployment_id) if job.deployment_id else None
    notifications.emit(
        session,
        job.org_id,
        event,
        {
            "job_id": str(job.id),
            "org": org.slug if org is not None else None,
            "deployment": dep.name if dep is not None else None,
            "user": user.name if user is not None else None,
            "user_id": str(job.user_id),
            "machine_type": job.machine_type,
            "reason": job.reason,
            "flow_run_id": str(job.flow_run_id) if job.flow_run_id else None,
            "state": job.state,
        },
    )


# ----------------------------------------------------------------- after the commit


def tell_prefect(gateway: PrefectGateway, transitions: Iterable[Transition]) -> None:
    """Make the Prefect calls the committed transitions ask for. Best effort: the
    dispatcher's reconciler repeats what fails here (Prefect down included)."""
    for t in transitions:
        run_id = t.job.flow_run_id
        if run_id is None or not t.accepted:
            continue
        try:
            if Effect.tell_prefect_release in t.effects:
                gateway.release_flow_run(run_id)
            elif Effect.tell_prefect_hold in t.effects:
                gateway.hold_flow_run(run_id, t.job.reason or "Waiting for a slot.")
            elif Effect.tell_prefect_reject in t.effects:
                gateway.reject_flow_run(run_id, t.job.reason or "Rejected.")
            elif Effect.tell_prefect_cancel in t.effects:
                gateway.cancel_flow_run(run_id, t.job.reason or None)
        except DomainError as exc:
            log.info("run %s: %s left to the dispatcher: %s", run_id, t.event.value, exc.detail)
