"""The job ledger: deployments, jobs, schedules, and the dispatcher's lease.

The ledger is the source of truth for admission and slots; Prefect holds the runs.
A job row is committed before its flow run exists, and the job id is the run's
idempotency key, so creating the run can be retried any number of times.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from orgs.db import Base, UTCDateTime, utcnow
from orgs.models import BigId, JSONType, new_id

# Our job states (API.md), plus `cancelling` while Prefect stops a running run.
HELD = "held"
SCHEDULED = "scheduled"
RUNNING = "running"
CANCELLING = "cancelling"
COMPLETED = "completed"
FAILED = "failed"
CRASHED = "crashed"
CANCELLED = "cancelled"
REJECTED = "rejected"

# States that hold one of the user's slots (count against concurrency limits).
ACTIVE_STATES = frozenset({SCHEDULED, RUNNING, CANCELLING})
QUEUED_STATES = frozenset({HELD})
FINAL_STATES = frozenset({COMPLETED, FAILED, CRASHED, CANCELLED, REJECTED})
ALL_STATES = ACTIVE_STATES | QUEUED_STATES | FINAL_STATES


class Project(Base):
    """A group of an organization's deployments (later: its Git repository and store).

    Every org has a `default` project (made by migration 0019, else on first use);
    `created_by` None means nobody's own: only admins manage it.
    """

    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    git_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Who sees it and everything in it (policies.visibility): org | teams | personal.
    visibility: Mapped[str] = mapped_column(String(16), default="org", server_default="org")


class ProjectTeam(Base):
    """A team that sees a `teams` project."""

    __tablename__ = "project_teams"

    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Deployment(Base):
    """A flow entrypoint registered with an organization (one Prefect deployment)."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    project_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("projects.id", ondelete="SET NULL"), nullable=True, index=True
    )
    name: Mapped[str] = mapped_column(String(64))
    flow_name: Mapped[str] = mapped_column(String(128))
    entrypoint: Mapped[str] = mapped_column(String(512))
    path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    machine_type: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    parameter_schema: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    job_variables: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # prefect.yaml `concurrency_limit`: enforced by our admission (policies.admission
    # `deployment_concurrency`), never by Prefect. `enqueue`: hold; `cancel_new`: reject.
    concurrency_limit: Mapped[int | None] = mapped_column(nullable=True)
    collision_strategy: Mapped[str] = mapped_column(String(16), default="enqueue")
    prefect_deployment_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    # The code its jobs run: {"kind": "bundle", "digest": "sha256:...", "size", "files"};
    # None: the code is already on the machines (`path`, legacy mode).
    code: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Loaded with the row: every listing shows the project's name.
    project: Mapped[Project | None] = relationship(lazy="joined")


_HELD_OR_WAITED = "state = 'held' OR released_at > created_at"
_OPEN = "state IN ('held', 'scheduled', 'running', 'cancelling')"


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("org_id", "user_id", "idempotency_key"),
        Index("ix_jobs_org_state_priority", "org_id", "state", "priority", "created_at"),
        Index("ix_jobs_org_user_state", "org_id", "user_id", "state"),
        Index("ix_jobs_state_updated", "state", "updated_at"),
        # Covering indexes for the admission counts (flows.usage): counted from the
        # index alone, on every submission and release.
        Index("ix_jobs_org_user_state_type", "org_id", "user_id", "state", "machine_type"),
        Index("ix_jobs_org_state_type", "org_id", "state", "machine_type"),
        # A deployment's concurrency_limit counts its active jobs (migration 0024).
        Index("ix_jobs_deployment_state", "deployment_id", "state"),
        # Overview and usage views (orgs.usage_views; migrations 0006 and 0007).
        Index("ix_jobs_org_ended", "org_id", "ended_at", "started_at", "machine_type", "user_id"),
        Index("ix_jobs_org_created", "org_id", "created_at"),
        Index("ix_jobs_machine_ended", "machine_id", "ended_at"),
        Index(
            "ix_jobs_org_held_created",
            "org_id",
            "created_at",
            "user_id",
            postgresql_where=text(_HELD_OR_WAITED),
            sqlite_where=text(_HELD_OR_WAITED),
        ),
        Index(
            "ix_jobs_org_open",
            "org_id",
            "state",
            postgresql_where=text(_OPEN),
            sqlite_where=text(_OPEN),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="SET NULL"), nullable=True, index=True
    )
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    source: Mapped[str] = mapped_column(String(16), default="api")  # api | schedule | prefect
    machine_type: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    rule: Mapped[str] = mapped_column(String(64), default="")
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    memory_mb: Mapped[int] = mapped_column(Integer)
    max_runtime_s: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    job_metadata: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # The deployment's code when the job was submitted (kept: a rerun runs it again).
    code: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    flow_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, unique=True, nullable=True)
    prefect_state: Mapped[str] = mapped_column(String(64), default="")
    machine_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A container job's image: {ref, digest}; the digest is the machine's (flows.containers).
    image: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class JobSubrun(Base):
    """A subflow run a job's flow created (through the Prefect proxy): it acts with its
    job's identity, so the job's credential may write it and whoever sees the job sees
    it. Rows go with their job."""

    __tablename__ = "job_subruns"

    flow_run_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    parent_flow_run_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class JobMetric(Base):
    """One point of a metric series a job logged (`log_metadata(step=..., loss=...)`):
    the value of `key` at `step`. Logging a step again replaces its value. Bounded per
    job (flows.job_metrics); rows go with their job."""

    __tablename__ = "job_metrics"
    __table_args__ = (UniqueConstraint("job_id", "key", "step"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    logged_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Schedule(Base):
    """A schedule on a deployment, attributed to the member who created it.

    ``kind``: ``cron`` (``cron``), ``interval`` (``interval_s`` from ``anchor_date``) or
    ``rrule`` (``rrule``), each in ``timezone`` (``cron`` is "" for the other kinds).
    ``declared``: comes from a prefect.yaml; `cshare deploy` replaces these, never the
    schedules members made with `cshare schedule create`.
    """

    __tablename__ = "schedules"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default="cron")
    cron: Mapped[str] = mapped_column(String(128), default="")
    interval_s: Mapped[float | None] = mapped_column(nullable=True)
    anchor_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    rrule: Mapped[str | None] = mapped_column(Text, nullable=True)
    declared: Mapped[bool] = mapped_column(default=False)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    active: Mapped[bool] = mapped_column(default=True)
    prefect_schedule_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Lease(Base):
    """A named lease (leader election): one dispatcher among replicas holds it."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PrefectTask(Base):
    """Work for Prefect left behind by a transaction whose rows are gone (an org deleted,
    a member's schedules removed): the dispatcher carries it out, then deletes the row.

    ``kind``: ``delete_deployment`` (target: Prefect deployment id), ``cancel_run``
    (target: flow run id), ``force_cancel_run`` (target: flow run id; for runs nobody
    will finish cancelling), ``delete_schedule`` (target: Prefect schedule id of
    ``deployment_id``), ``delete_work_pool`` (``target_name``: the pool; target: the
    deleted organization's id).
    """

    __tablename__ = "prefect_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    # For targets Prefect knows by name (work pools).
    target_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
