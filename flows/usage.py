"""Admission snapshots from the job ledger: how many slots a user and an org hold now.

Every caller that decides about a job (submit, explain, the dispatcher releasing a held
job, the agent claiming a run) builds its snapshot here, so they all count the same way:

- ``UserUsage.running``: the user's jobs in ``ACTIVE_STATES`` (scheduled, running,
  cancelling: each holds a slot until Prefect confirms it is over);
- ``UserUsage.queued``: the user's held jobs;
- ``OrgUsage.running_by_type``: the organization's active jobs per machine type.

The job being decided is never counted (``exclude_job_id``), otherwise a user at exactly
their limit would be held by their own job.

``lock=True`` serializes admission per organization: on PostgreSQL it takes the org row
lock (``SELECT ... FOR UPDATE``) and re-reads the limits under it, so two concurrent
submissions cannot both see the last free slot, and a settings change (which takes the
same lock) cannot interleave. On SQLite the write transaction (``BEGIN IMMEDIATE``)
already serializes every writer, and SQLAlchemy renders no ``FOR UPDATE`` there.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import replace
from typing import Any
from uuid import UUID

from sqlalchemy import func, literal, select, union_all
from sqlalchemy.orm import Session

from flows.models import ACTIVE_STATES, HELD, Deployment, Job
from orgs import settings_doc
from orgs.models import Organization, Team, TeamMember
from policies.admission import (
    Accept,
    AdmissionSnapshot,
    Hold,
    JobRequest,
    OrgUsage,
    TeamUsage,
    UserUsage,
)
from policies.permissions import Role

__all__ = ["REQUESTED_KEY", "AdmissionCounter", "admission_snapshot", "job_request_for"]

# Key in ``Job.job_metadata`` holding what the submitter asked for (None = "org maximum"),
# so a held job's resources are recomputed against the limits in force at release.
REQUESTED_KEY = "requested"


def admission_snapshot(
    session: Session,
    org: Organization,
    user_id: UUID | None,
    role: Role | None,
    request: JobRequest,
    *,
    exclude_job_id: UUID | None = None,
    for_release: bool = False,
    lock: bool = False,
    deployment_id: UUID | None = None,
    deployment: Deployment | None = None,
) -> AdmissionSnapshot:
    """The snapshot ``policies.admission.decide`` needs, counted from the ledger.

    ``user_id`` None (a run with no known submitter) counts no user usage; ``role`` None
    then rejects it anyway. Call with ``lock=True`` inside the write transaction that will
    act on the decision. ``deployment_id``: the job's deployment, whose
    ``concurrency_limit`` (if any) goes into the request with its active jobs counted.
    """
    raw_settings: dict[str, Any]
    if lock:
        locked = session.execute(
            select(Organization.settings).where(Organization.id == org.id).with_for_update()
        ).scalar_one()
        raw_settings = dict(locked or {})
    else:
        raw_settings = dict(org.settings or {})
    limits = _limits_of(org.id, raw_settings)

    # One round trip for both counts (each half index-only): the user's held and active
    # jobs, and the org's active jobs, per state and machine type.
    active = tuple(sorted(ACTIVE_STATES))
    org_part = select(Job.state, Job.machine_type, literal(False).label("mine"), func.count())
    org_part = org_part.where(Job.org_id == org.id, Job.state.in_(active))
    if exclude_job_id is not None:
        org_part = org_part.where(Job.id != exclude_job_id)
    parts = [org_part.group_by(Job.state, Job.machine_type)]
    if user_id is not None:
        user_part = select(Job.state, Job.machine_type, literal(True).label("mine"), func.count())
        user_part = user_part.where(
            Job.org_id == org.id, Job.user_id == user_id, Job.state.in_((*active, HELD))
        )
        if exclude_job_id is not None:
            user_part = user_part.where(Job.id != exclude_job_id)
        parts.append(user_part.group_by(Job.state, Job.machine_type))
    running = queued = 0
    running_by_type: dict[str, int] = {}
    org_by_type: dict[str, int] = {}
    for state, machine_type, is_mine, n in session.execute(union_all(*parts)):
        if not is_mine:
            org_by_type[machine_type] = org_by_type.get(machine_type, 0) + n
        elif state == HELD:
            queued += n
        else:
            running += n
            running_by_type[machine_type] = running_by_type.get(machine_type, 0) + n

    deployment_running = 0
    if deployment is not None:
        request, deployment_running = _with_deployment_limit(
            session, request, deployment.id, exclude_job_id, deployment
        )
    elif deployment_id is not None:
        request, deployment_running = _with_deployment_limit(
            session, request, deployment_id, exclude_job_id
        )

    teams = _team_usage(session, org, user_id, active, exclude_job_id) if user_id else ()
    return AdmissionSnapshot(
        role=role,
        limits=limits,
        request=request,
        user=UserUsage(running=running, queued=queued, running_by_type=running_by_type),
        org=OrgUsage(running_by_type=org_by_type),
        for_release=for_release,
        deployment_running=deployment_running,
        teams=teams,
    )


def _team_usage(
    session: Session,
    org: Organization,
    user_id: UUID,
    active: tuple[str, ...],
    exclude_job_id: UUID | None,
) -> tuple[TeamUsage, ...]:
    """The user's teams that carry limits, each with its members' active jobs in the
    org (counted under the same org lock as the user's own, so team caps hold exactly)."""
    teams = session.scalars(
        select(Team)
        .join(TeamMember, TeamMember.team_id == Team.id)
        .where(
            Team.org_id == org.id,
            TeamMember.user_id == user_id,
            (Team.max_concurrent_jobs.is_not(None)) | (Team.machine_types.is_not(None)),
        )
        .order_by(Team.name)
    ).all()
    out: list[TeamUsage] = []
    for team in teams:
        running = 0
        if team.max_concurrent_jobs is not None:
            members = select(TeamMember.user_id).where(TeamMember.team_id == team.id)
            counted = select(func.count()).select_from(Job)
            counted = counted.where(
                Job.org_id == org.id, Job.user_id.in_(members), Job.state.in_(active)
            )
            if exclude_job_id is not None:
                counted = counted.where(Job.id != exclude_job_id)
            running = int(session.scalar(counted) or 0)
        types = tuple(team.machine_types) if team.machine_types is not None else None
        out.append(TeamUsage(team.name, team.max_concurrent_jobs, types, running))
    return tuple(out)


def _with_deployment_limit(
    session: Session,
    request: JobRequest,
    deployment_id: UUID,
    exclude_job_id: UUID | None,
    loaded: Deployment | None = None,
) -> tuple[JobRequest, int]:
    """The request with its deployment's concurrency limit, and that deployment's jobs
    holding a slot (0 when it has no limit: then nobody looks). `loaded`: the
    deployment as read in this transaction, saving the query."""
    limit_row: Any
    if loaded is not None:
        limit_row = (loaded.concurrency_limit, loaded.collision_strategy)
    else:
        limit_row = session.execute(
            select(Deployment.concurrency_limit, Deployment.collision_strategy).where(
                Deployment.id == deployment_id
            )
        ).first()
    if limit_row is None or limit_row[0] is None:
        return request, 0
    request = replace(
        request,
        deployment_limit=limit_row[0],
        collision_strategy="cancel_new" if limit_row[1] == "cancel_new" else "enqueue",
    )
    counted = select(func.count()).select_from(Job)
    counted = counted.where(
        Job.deployment_id == deployment_id, Job.state.in_(tuple(sorted(ACTIVE_STATES)))
    )
    if exclude_job_id is not None:
        counted = counted.where(Job.id != exclude_job_id)
    return request, int(session.scalar(counted) or 0)


# The parsed limits of each org's settings as last seen, reused while the stored
# settings are equal (compared whole, so any change, by any replica, is seen at once):
# parsing the document was ~1 ms of every submission.
_LIMITS: dict[UUID, tuple[dict[str, Any], Any]] = {}
_LIMITS_LOCK = threading.Lock()
_LIMITS_MAX = 4096


def _limits_of(org_id: UUID, raw: dict[str, Any]) -> Any:
    with _LIMITS_LOCK:
        hit = _LIMITS.get(org_id)
    if hit is not None and hit[0] == raw:
        return hit[1]
    limits = settings_doc.load(raw).limits
    with _LIMITS_LOCK:
        if len(_LIMITS) >= _LIMITS_MAX:
            _LIMITS.clear()
        # A copy of our own: the caller's nested dicts may be changed in place later.
        _LIMITS[org_id] = (copy.deepcopy(raw), limits)
    return limits


class AdmissionCounter:
    """Snapshots for many submissions of one user in one transaction (a batch): the
    org lock taken and the ledger counted once, then each admitted job added here as
    the ledger would count it. Exact: nobody else admits into this org while the lock
    is held, and jobs ending meanwhile only make the counts err on the safe side."""

    def __init__(
        self, session: Session, org: Organization, user_id: UUID, role: Role | None
    ) -> None:
        self._session = session
        self._base = admission_snapshot(
            session, org, user_id, role, JobRequest(machine_type=""), lock=True
        )
        self._running = self._base.user.running
        self._queued = self._base.user.queued
        self._mine = dict(self._base.user.running_by_type)
        self._org = dict(self._base.org.running_by_type)
        self._teams = self._base.teams  # the submitter's teams, counts updated by add()
        # deployment id -> (request fields, jobs holding a slot) once asked.
        self._deployments: dict[UUID, tuple[JobRequest, int]] = {}

    def snapshot(self, request: JobRequest, deployment_id: UUID | None) -> AdmissionSnapshot:
        running = 0
        if deployment_id is not None:
            if deployment_id not in self._deployments:
                limited, count = _with_deployment_limit(self._session, request, deployment_id, None)
                self._deployments[deployment_id] = (limited, count)
            limited, running = self._deployments[deployment_id]
            request = replace(
                request,
                deployment_limit=limited.deployment_limit,
                collision_strategy=limited.collision_strategy,
            )
        return replace(
            self._base,
            request=request,
            user=UserUsage(self._running, self._queued, self._mine),
            org=OrgUsage(self._org),
            teams=self._teams,
            deployment_running=running,
        )

    def add(self, decision: Accept | Hold, machine_type: str, deployment_id: UUID | None) -> None:
        """A job just admitted (`Accept`: holds a slot now) or held."""
        if isinstance(decision, Hold):
            self._queued += 1
            return
        self._running += 1
        self._mine[machine_type] = self._mine.get(machine_type, 0) + 1
        self._org[machine_type] = self._org.get(machine_type, 0) + 1
        # Each of the submitter's teams counts its members' active jobs: this one too.
        self._teams = tuple(replace(t, running=t.running + 1) for t in self._teams)
        if deployment_id is not None and deployment_id in self._deployments:
            limited, count = self._deployments[deployment_id]
            self._deployments[deployment_id] = (limited, count + 1)


def job_request_for(job: Job, deployment_known: bool = True) -> JobRequest:
    """The request a ledger job was admitted with.

    Uses what the submitter asked for (stored under ``job_metadata["requested"]``) when
    known, so "no request" still means "the org maximum" at release time; falls back to
    the job's stored effective resources.
    """
    requested = (job.job_metadata or {}).get(REQUESTED_KEY)
    if isinstance(requested, dict):
        memory = requested.get("memory_mb")
        runtime = requested.get("max_runtime_s")
        return JobRequest(
            machine_type=job.machine_type,
            memory_mb=memory if isinstance(memory, int) else None,
            max_runtime_s=runtime if isinstance(runtime, int) else None,
            deployment_known=deployment_known,
        )
    return JobRequest(
        machine_type=job.machine_type,
        memory_mb=job.memory_mb,
        max_runtime_s=job.max_runtime_s,
        deployment_known=deployment_known,
    )
