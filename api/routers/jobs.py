"""Jobs: submit, explain, list, show, cancel, logs (under /orgs/{org}/jobs)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import Requires, SessionDep, SettingsDep, get_database
from api.errors import error_body, status_for
from api.routers.deployments import GatewayDep
from flows import batch_submit, containers, jobs, lineage
from flows.gateway import PrefectGateway
from flows.models import FINAL_STATES, Deployment, Job
from flows.prefect_access import ui_url_for_flow_run
from orgs.config import Settings
from orgs.context import OrgContext
from orgs.db import Database
from orgs.models import Machine, Organization, User
from policies.errors import DomainError
from policies.permissions import Permission

router = APIRouter(tags=["jobs"])

JobsSubmit = Annotated[OrgContext, Depends(Requires(Permission.jobs_submit))]
JobsView = Annotated[OrgContext, Depends(Requires(Permission.jobs_view_own))]
JobsCancel = Annotated[OrgContext, Depends(Requires(Permission.jobs_cancel_own))]

_INT32 = 2**31 - 1
JobId = Annotated[uuid.UUID, Path(alias="id", description="The job id.")]


class ResourcesIn(BaseModel):
    memory_mb: int | None = Field(None, ge=-_INT32, le=_INT32, description="MB")
    max_runtime_s: int | None = Field(None, ge=-_INT32, le=_INT32, description="seconds")


class JobIn(BaseModel):
    deployment: str = Field(
        "", max_length=64, description="The flow's deployment (empty for a command job)."
    )
    # A command job (flows.containers): the image and the command instead of a flow.
    image: str | None = Field(None, max_length=300, description="Image to run the command in.")
    command: list[str] | None = Field(None, max_length=256, description="With `image`.")
    cpus: float | None = Field(None, description="CPU cores for a command job's container.")
    parameters: dict[str, Any] = Field(default_factory=dict)
    machine_type: str | None = Field(None, max_length=32)
    resources: ResourcesIn = Field(default_factory=ResourcesIn)
    inputs: list[dict[str, Any]] = Field(default_factory=list, max_length=50)
    outputs: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="Dataset names the job writes; its job token may write only these "
        "(none: any dataset the submitter may write).",
    )
    priority: int = Field(0, ge=jobs.MIN_PRIORITY, le=jobs.MAX_PRIORITY)
    tags: list[str] = Field(default_factory=list, max_length=50)
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=128, description="Repeats return the first job (200)."
    )

    def spec(self) -> jobs.SubmitSpec:
        return jobs.SubmitSpec(
            deployment=self.deployment,
            parameters=self.parameters,
            machine_type=self.machine_type,
            memory_mb=self.resources.memory_mb,
            max_runtime_s=self.resources.max_runtime_s,
            inputs=self.inputs,
            outputs=self.outputs,
            priority=self.priority,
            tags=self.tags,
            idempotency_key=self.idempotency_key,
        )


class ResourcesOut(BaseModel):
    memory_mb: int
    max_runtime_s: int


class NamedRef(BaseModel):
    id: uuid.UUID | None
    name: str | None


class JobOut(BaseModel):
    id: uuid.UUID
    state: str
    reason: str | None
    rule: str | None
    flow_run_id: uuid.UUID | None
    deployment: str | None
    user: NamedRef
    machine_type: str
    machine: NamedRef | None
    parameters: dict[str, Any]
    resources: ResourcesOut
    priority: int
    tags: list[str]
    source: str
    schedule_id: uuid.UUID | None
    idempotency_key: str | None
    queue_position: int | None = Field(description="1-based place in your queue when held.")
    prefect_state: str | None
    prefect_url: str | None
    created_at: datetime
    released_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    cancel_requested_at: datetime | None
    code: dict[str, Any] | None = Field(
        default=None,
        description="The code the job runs: {kind: bundle, digest, size, files}, with "
        "`fetch_ms` and `cached` once its machine fetched it; null: the machines' own copy.",
    )
    image: dict[str, Any] | None = Field(
        None, description="A command job's image: {ref, digest} (the digest once pulled)."
    )


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class RuleOut(BaseModel):
    rule: str
    effect: str
    status: str
    reason: str
    field: str | None


class ExplainOut(BaseModel):
    decision: str = Field(description="accept, hold or reject")
    rule: str | None
    reason: str
    field: str | None
    queue_position: int | None
    machine_type: str
    resources: ResourcesOut
    rules: list[RuleOut]


class LogLineOut(BaseModel):
    timestamp: datetime
    level: int
    level_name: str
    message: str


class LogPage(BaseModel):
    items: list[LogLineOut]
    offset: int
    next_offset: int
    job_state: str
    done: bool = Field(description="The job is over and every line so far was returned.")


def job_out(
    job: Job,
    session: Session,
    settings: Settings,
    gateway: PrefectGateway,
    *,
    user_name: str | None = None,
    deployment_name: str | None = None,
    with_position: bool = True,
    machine_names: dict[uuid.UUID, str] | None = None,
) -> JobOut:
    """One job as the API shows it. `with_position=False` (listings): no queue position
    and no code fetch time (each is one more query per row). `machine_names`: the
    page's machines, read in one query (`machine_names_of`), not one per row."""
    org = session.get(Organization, job.org_id)
    if user_name is None:
        user = session.get(User, job.user_id)
        user_name = user.name if user is not None else None
    if deployment_name is None and job.deployment_id is not None:
        dep = session.get(Deployment, job.deployment_id)
        deployment_name = dep.name if dep is not None else None
    machine = None
    if job.machine_id is not None:
        if machine_names is not None:
            name = machine_names.get(job.machine_id)
        else:
            row = session.get(Machine, job.machine_id)
            name = row.name if row is not None else None
        machine = NamedRef(id=job.machine_id, name=name)
    return JobOut(
        id=job.id,
        state=job.state,
        reason=job.reason or None,
        rule=job.rule or None,
        flow_run_id=job.flow_run_id,
        deployment=deployment_name,
        user=NamedRef(id=job.user_id, name=user_name),
        machine_type=job.machine_type,
        machine=machine,
        parameters=dict(job.parameters or {}),
        resources=ResourcesOut(memory_mb=job.memory_mb, max_runtime_s=job.max_runtime_s),
        priority=job.priority,
        tags=list(job.tags or []),
        source=job.source,
        schedule_id=job.schedule_id,
        idempotency_key=job.idempotency_key,
        queue_position=jobs.queue_position(session, job) if with_position else None,
        prefect_state=job.prefect_state or None,
        prefect_url=ui_url_for_flow_run(settings, org.slug, job.flow_run_id)
        if job.flow_run_id and org is not None
        else None,
        created_at=job.created_at,
        released_at=job.released_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        cancel_requested_at=job.cancel_requested_at,
        code=lineage.job_code(session, job)
        if with_position
        else (dict(job.code) if job.code else None),
        image=dict(job.image) if job.image else None,
    )


def machine_names_of(session: Session, rows: list[Job]) -> dict[uuid.UUID, str]:
    """The names of the machines `rows` ran on, in one query."""
    ids = {job.machine_id for job in rows if job.machine_id is not None}
    if not ids:
        return {}
    found = session.execute(select(Machine.id, Machine.name).where(Machine.id.in_(ids)))
    return dict(found.tuples().all())


async def admission_rejected_handler(_request: Request, exc: Exception) -> JSONResponse:
    """`{"error": <rule>, "detail", "rule", "field"?}` with the rule's status."""
    assert isinstance(exc, jobs.AdmissionRejected)
    extra: dict[str, object] = {"rule": exc.rule}
    if exc.field:
        extra["field"] = exc.field
    return JSONResponse(error_body(exc.rule, exc.detail, **extra), status_code=status_for(exc))


def submit_spec(
    body: JobIn, ctx: OrgContext, session: Session, gateway: PrefectGateway, settings: Settings
) -> jobs.SubmitSpec:
    """The submission `body` asks for: a flow's deployment, or a command in an image
    (flows.containers, on the org's built-in command deployment)."""
    spec = body.spec()
    if body.image is None and body.command is None:
        return spec
    return containers.prepare_command(
        ctx,
        session,
        gateway,
        spec,
        image=body.image or "",
        command=body.command,
        cpus=body.cpus,
        pool_type=settings.work_pool_type,
    )


@router.post(
    "/orgs/{org}/jobs",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "A job with this idempotency_key existed; returned."}},
)
def submit_job(
    body: JobIn,
    ctx: JobsSubmit,
    session: SessionDep,
    gateway: GatewayDep,
    settings: SettingsDep,
    response: Response,
    background: BackgroundTasks,
    db: Annotated[Database, Depends(get_database)],
) -> JobOut:
    """Submit a job: scheduled now, or held (with the reason) until a slot frees.

    Refusals name the admission rule: 403 role, 422 unknown deployment or machine type
    or resources above the maximum, 429 too many queued jobs. `flow_run_id` is null if
    Prefect was unreachable: the job is recorded and its run is created later.
    """
    spec = submit_spec(body, ctx, session, gateway, settings)
    job, created = jobs.submit(
        ctx, session, gateway, spec, defer=(background.add_task, db), settings=settings
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    out = job_out(job, session, settings, gateway, user_name=ctx.user.name)
    # End the (write) transaction the reads above opened: the deferred attach needs the
    # SQLite write lock, and may run before this session is closed.
    session.commit()
    return out


class BatchIn(BaseModel):
    jobs: list[JobIn] = Field(
        min_length=1,
        max_length=batch_submit.MAX_BATCH,
        description=f"Up to {batch_submit.MAX_BATCH} job specs, each as for a single submit.",
    )


class BatchItemOut(BaseModel):
    index: int = Field(description="The item's place in `jobs` (0-based).")
    status: int = Field(
        description="201 created, 200 found by its idempotency_key, or the "
        "status a single submission would have answered with."
    )
    job: JobOut | None = None
    error: str | None = Field(None, description="The error (or refusing rule) code.")
    detail: str | None = None
    rule: str | None = None
    field: str | None = None


class BatchOut(BaseModel):
    items: list[BatchItemOut]
    created: int
    existing: int
    failed: int


def _batch_item(
    result: batch_submit.ItemResult,
    session: Session,
    settings: Settings,
    gateway: PrefectGateway,
    user_name: str,
    dep_names: dict[uuid.UUID, str],
) -> BatchItemOut:
    if result.job is None:
        exc = result.error
        assert exc is not None
        rule = exc.rule if isinstance(exc, jobs.AdmissionRejected) else None
        return BatchItemOut(
            index=result.index,
            status=status_for(exc),
            error=exc.code,
            detail=exc.detail,
            rule=rule,
            field=getattr(exc, "field", None),
        )
    job = result.job
    out = job_out(
        job,
        session,
        settings,
        gateway,
        user_name=user_name,
        deployment_name=dep_names.get(job.deployment_id) if job.deployment_id else None,
        with_position=False,
    )
    return BatchItemOut(index=result.index, status=201 if result.created else 200, job=out)


@router.post("/orgs/{org}/jobs:batch")
def submit_jobs_batch(
    body: BatchIn,
    ctx: JobsSubmit,
    session: SessionDep,
    gateway: GatewayDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    db: Annotated[Database, Depends(get_database)],
) -> BatchOut:
    """Submit up to 1,000 jobs in one call, admitted in one transaction in order, each
    exactly as a single submission would be (scheduled, held or refused by the same
    rules, `idempotency_key` per item). Per-item results: `status` 201/200, or the
    error a single submission would have answered with (the others still go in).
    Malformed items are refused as a whole with 422 naming the item's index."""
    specs: list[jobs.SubmitSpec | DomainError] = []
    for item in body.jobs:
        try:
            specs.append(submit_spec(item, ctx, session, gateway, settings))
        except DomainError as exc:
            specs.append(exc)
    results = batch_submit.submit_batch(
        ctx, session, gateway, specs, defer=(background.add_task, db), settings=settings
    )
    dep_ids = {r.job.deployment_id for r in results if r.job is not None and r.job.deployment_id}
    dep_names = dict(
        session.execute(select(Deployment.id, Deployment.name).where(Deployment.id.in_(dep_ids)))
        .tuples()
        .all()
    )
    items = [_batch_item(r, session, settings, gateway, ctx.user.name, dep_names) for r in results]
    session.commit()
    return BatchOut(
        items=items,
        created=sum(1 for i in items if i.status == 201),
        existing=sum(1 for i in items if i.status == 200),
        failed=sum(1 for i in items if i.job is None),
    )


@router.post("/orgs/{org}/jobs/explain")
def explain_job(body: JobIn, ctx: JobsSubmit, session: SessionDep) -> ExplainOut:
    """What a submission would get (decision, rule, queue position); creates nothing."""
    ex = jobs.explain_submission(ctx, session, body.spec())
    return ExplainOut(
        decision=ex.decision,
        rule=ex.rule,
        reason=ex.reason,
        field=ex.field,
        queue_position=ex.queue_position,
        machine_type=ex.machine_type,
        resources=ResourcesOut(memory_mb=ex.memory_mb, max_runtime_s=ex.max_runtime_s),
        rules=[
            RuleOut(rule=o.rule, effect=o.effect, status=o.status, reason=o.reason, field=o.field)
            for o in ex.rules
        ],
    )


@router.get("/orgs/{org}/jobs")
def list_jobs(
    ctx: JobsView,
    session: SessionDep,
    settings: SettingsDep,
    gateway: GatewayDep,
    state: Annotated[str | None, Query(max_length=16)] = None,
    user: Annotated[str | None, Query(max_length=64, description="Name or id (admins).")] = None,
    deployment: Annotated[str | None, Query(max_length=64)] = None,
    tag: Annotated[
        list[str] | None, Query(max_length=20, description="Jobs with this tag (repeat: all).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JobPage:
    """Your jobs (admins: everyone's), newest first."""
    rows, total = jobs.list_jobs(
        ctx,
        session,
        state=state,
        user=user,
        deployment=deployment,
        tags=tag or (),
        limit=limit,
        offset=offset,
    )
    names = machine_names_of(session, [job for job, _, _ in rows])
    items = [
        job_out(
            job,
            session,
            settings,
            gateway,
            user_name=user_name,
            deployment_name=dep_name,
            with_position=False,
            machine_names=names,
        )
        for job, user_name, dep_name in rows
    ]
    return JobPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/orgs/{org}/jobs/{id}")
def get_job(
    job_id: JobId,
    ctx: JobsView,
    session: SessionDep,
    settings: SettingsDep,
    gateway: GatewayDep,
) -> JobOut:
    return job_out(jobs.get_job(ctx, session, job_id), session, settings, gateway)


@router.post("/orgs/{org}/jobs/{id}/rerun", status_code=status.HTTP_201_CREATED)
def rerun_job(
    job_id: JobId,
    ctx: JobsSubmit,
    session: SessionDep,
    gateway: GatewayDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    db: Annotated[Database, Depends(get_database)],
) -> JobOut:
    """Run a job again: a new job with exactly its deployment, parameters, pinned input
    versions and code (even if the deployment was redeployed since), or a command job's
    image (by the digest it pulled) and command, through admission like any submission
    (you submit it). 409 `deployment_gone` when the deployment was deleted."""
    job = containers.rerun(
        ctx,
        session,
        gateway,
        job_id,
        pool_type=settings.work_pool_type,
        defer=(background.add_task, db),
    )
    out = job_out(job, session, settings, gateway, user_name=ctx.user.name)
    session.commit()
    return out


@router.post("/orgs/{org}/jobs/{id}/cancel")
def cancel_job(
    job_id: JobId,
    ctx: JobsCancel,
    session: SessionDep,
    settings: SettingsDep,
    gateway: GatewayDep,
) -> JobOut:
    """Held -> cancelled at once; scheduled/running -> cancelling, then cancelled once
    Prefect confirms. Yours, or anyone's for admins."""
    job = jobs.cancel(ctx, session, gateway, job_id)
    return job_out(job, session, settings, gateway)


@router.get("/orgs/{org}/jobs/{id}/logs")
def job_logs(
    job_id: JobId,
    ctx: JobsView,
    session: SessionDep,
    gateway: GatewayDep,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 200,
) -> LogPage:
    """A page of the run's log lines from `offset` (poll with `next_offset` to follow)."""
    job, lines = jobs.job_logs(ctx, session, gateway, job_id, offset=offset, limit=limit)
    return LogPage(
        items=[
            LogLineOut(
                timestamp=line.timestamp,
                level=line.level,
                level_name=line.level_name,
                message=line.message,
            )
            for line in lines
        ],
        offset=offset,
        next_offset=offset + len(lines),
        job_state=job.state,
        done=job.state in FINAL_STATES and len(lines) < limit,
    )
