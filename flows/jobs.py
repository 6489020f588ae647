"""Jobs: submission with admission control, explain, listing, show, cancel and logs.

A submission, in order:

1. input checks that need no lock: the deployment, its parameter schema, tags;
2. ONE write transaction holding the organization's admission lock
   (``flows.usage.admission_snapshot(lock=True)``): snapshot -> ``policies.admission``
   -> reject (an error naming the rule; nothing is stored or created) or insert the job
   (``scheduled`` or ``held``) and its ``job.submitted`` audit row; commit;
3. after the commit, create the Prefect flow run with ``idempotency_key = job id`` and
   store its id.

If Prefect is down after the gateway's retries, step 3 is left to the dispatcher: the
job is committed (it is the source of truth and holds its slot or queue place), the
answer is 201 with ``flow_run_id: null``, and the dispatcher creates the run later with
the same idempotency key, so it can exist at most once. Answering 503 instead would
invite the client to submit again and double the job.

Rejections are not stored: the answer is the record (and a log line). Rows are kept
for work that exists; a client stuck in a loop of 429s must not grow the ledger.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    and_,
    exists,
    func,
    literal,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from datasets import catalog
from flows import git_sources, ledger, visibility
from flows.deployments import find_deployment, validate_parameters, validate_tags
from flows.gateway import (
    FlowRunRef,
    LogLine,
    PrefectGateway,
    StateType,
    run_tags,
)
from flows.job_data import OUTPUTS_KEY, link_job_inputs, validate_outputs
from flows.models import (
    ALL_STATES,
    CANCELLING,
    FINAL_STATES,
    HELD,
    SCHEDULED,
    Deployment,
    Job,
    Project,
)
from flows.usage import REQUESTED_KEY, AdmissionCounter, admission_snapshot
from orgs import metrics
from orgs.config import Settings
from orgs.context import OrgContext
from orgs.db import Database, utcnow
from orgs.models import Organization, User
from orgs.scopes import scope_clause
from policies import access
from policies.access import JobFacts, Scope, Viewer
from policies.admission import (
    Accept,
    Decision,
    Hold,
    JobRequest,
    Reject,
    RuleOutcome,
    decide,
    effective_resources,
    explain,
)
from policies.errors import (
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    LimitExceeded,
    NotFound,
    Unavailable,
)
from policies.job_states import JobEvent
from policies.permissions import Permission

log = logging.getLogger(__name__)

__all__ = [
    "AdmissionRejected",
    "Explanation",
    "SubmitSpec",
    "cancel",
    "ensure_flow_run",
    "explain_submission",
    "get_job",
    "has_tag",
    "job_logs",
    "list_jobs",
    "queue_position",
    "rerun",
    "submit",
]

MIN_PRIORITY: Final = -100
MAX_PRIORITY: Final = 100
SETTLED_PREFECT_STATES: Final = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "CRASHED", "DELETED"}
)


# ---------------------------------------------------------------------- errors


class AdmissionRejected(DomainError):
    """The admission policy said no. ``code`` and ``rule`` are the rule's name."""

    def __init__(self, reject: Reject) -> None:
        super().__init__(reject.reason, code=reject.rule)
        self.rule = reject.rule
        self.field = reject.field


class RejectedForbidden(AdmissionRejected, Forbidden):
    pass


class RejectedInvalid(AdmissionRejected, Invalid):
    pass


class RejectedLimit(AdmissionRejected, LimitExceeded):
    pass


# Rule -> kind of error (and so HTTP status): who may not (403), a request that can never
# run as asked (422), a limit (429).
_REJECT_KIND: Final[dict[str, type[AdmissionRejected]]] = {
    "role_may_submit": RejectedForbidden,
    "dataset_access": RejectedForbidden,
    "known_deployment": RejectedInvalid,
    "known_machine_type": RejectedInvalid,
    "runtime_within_limit": RejectedInvalid,
    "memory_within_limit": RejectedInvalid,
    "queue_within_limit": RejectedLimit,
}


def rejection(reject: Reject) -> AdmissionRejected:
    return _REJECT_KIND.get(reject.rule, RejectedInvalid)(reject)


# ------------------------------------------------------------------ submission


@dataclass(frozen=True)
class SubmitSpec:
    deployment: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    machine_type: str | None = None
    memory_mb: int | None = None
    max_runtime_s: int | None = None
    inputs: Sequence[Mapping[str, Any]] = ()
    # Dataset names the job will write (its token may write only these); empty: any.
    outputs: Sequence[str] = ()
    priority: int = 0
    tags: Sequence[str] = ()
    idempotency_key: str | None = None
    # The code to run instead of the deployment's current one (a rerun's: `rerun`).
    code: Mapping[str, Any] | None = None
    # A command job's image, {ref, digest} (flows.containers.prepare_command).
    image: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Explanation:
    """What a submission would get, computed exactly as a submission would."""

    decision: str  # accept | hold | reject
    rule: str | None
    reason: str
    field: str | None
    queue_position: int | None
    memory_mb: int
    max_runtime_s: int
    machine_type: str
    rules: list[RuleOutcome]


@dataclass(frozen=True)
class _Prepared:
    deployment: Deployment | None
    request: JobRequest
    parameters: dict[str, Any]
    tags: list[str]
    inputs: list[dict[str, Any]]
    outputs: list[str]


def _pin_inputs(
    session: Session, ctx: OrgContext, specs: Sequence[Mapping[str, Any]], unreadable: list[str]
) -> list[dict[str, Any]]:
    # Checks read access and resolves "latest" to a concrete version; unreadable
    # datasets are named in `unreadable` for admission's dataset_access rule.
    return catalog.pin_inputs(session, ctx, specs, unreadable) if specs else []


def _link_inputs(session: Session, job: Job) -> None:
    if job.inputs:
        session.flush()
        link_job_inputs(session, job)


def _prepare(
    ctx: OrgContext,
    session: Session,
    spec: SubmitSpec,
    deployments: dict[str, Deployment | None] | None = None,
) -> _Prepared:
    """Checks that need no lock; builds the admission request. `deployments`: the
    deployments looked up so far (by name), for a batch."""
    if not MIN_PRIORITY <= spec.priority <= MAX_PRIORITY:
        raise Invalid(
            f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}.", field="priority"
        )
    if spec.idempotency_key is not None and spec.idempotency_key.startswith("schedule:"):
        # That namespace keys the fires of schedules (flows.dispatch.dispatcher).
        raise Invalid("Idempotency keys may not start with 'schedule:'.", field="idempotency_key")
    if deployments is None:
        dep = find_deployment(session, ctx.org, spec.deployment, viewer=ctx.viewer)
    elif spec.deployment in deployments:
        dep = deployments[spec.deployment]
    else:
        dep = deployments[spec.deployment] = find_deployment(
            session, ctx.org, spec.deployment, viewer=ctx.viewer
        )
    machine_type = spec.machine_type or (dep.machine_type if dep is not None else "cpu")
    if dep is not None:
        visibility.refuse_personal(
            ctx.viewer,
            ctx.org.settings or {},
            dep.project.visibility if dep.project is not None else None,
            "run jobs of personal projects",
        )
        if spec.machine_type and spec.machine_type != dep.machine_type:
            raise Invalid(
                f"Deployment '{dep.name}' runs on '{dep.machine_type}' machines; register "
                f"it with machine_type '{spec.machine_type}' to run it there.",
                field="machine_type",
            )
        # Defaults first, so a missing required parameter the deployment supplies is fine.
        merged = {**(dep.parameters or {}), **spec.parameters}
        validate_parameters(dep.parameter_schema or {}, merged, flow=f"deployment '{dep.name}'")
    tags = validate_tags(spec.tags)
    outputs = validate_outputs(spec.outputs)
    unreadable: list[str] = []
    inputs = _pin_inputs(session, ctx, spec.inputs, unreadable)
    request = JobRequest(
        machine_type=machine_type,
        memory_mb=spec.memory_mb,
        max_runtime_s=spec.max_runtime_s,
        deployment_known=dep is not None,
        inputs_readable=not unreadable,
    )
    return _Prepared(dep, request, dict(spec.parameters), tags, inputs, outputs)


def _dep_id(prep: _Prepared) -> uuid.UUID | None:
    return prep.deployment.id if prep.deployment is not None else None


def explain_submission(ctx: OrgContext, session: Session, spec: SubmitSpec) -> Explanation:
    """The decision, the rule and, for a hold, the queue position; creates nothing."""
    prep = _prepare(ctx, session, spec)
    snapshot = admission_snapshot(
        session, ctx.org, ctx.user.id, ctx.role, prep.request, deployment_id=_dep_id(prep)
    )
    outcomes = explain(snapshot)
    decision = _decide_from(outcomes, snapshot.limits, prep.request)
    resources = effective_resources(snapshot.limits, prep.request)
    position = None
    if isinstance(decision, Hold):
        position = _position_for_new(session, ctx.org.id, ctx.user.id, spec.priority)
    return Explanation(
        decision=decision.kind,
        rule=None if isinstance(decision, Accept) else decision.rule,
        reason=decision.reason
        if not isinstance(decision, Accept)
        else "Accepted: it would be scheduled now.",
        field=decision.field if isinstance(decision, Reject) else None,
        queue_position=position,
        memory_mb=resources.memory_mb,
        max_runtime_s=resources.max_runtime_s,
        machine_type=prep.request.machine_type,
        rules=outcomes,
    )


def _decide_from(outcomes: list[RuleOutcome], limits: Any, request: JobRequest) -> Decision:
    # Same verdict as policies.admission.decide, from outcomes already computed.
    for o in outcomes:
        if o.status == "fail":
            if o.effect == "reject":
                return Reject(o.rule, o.reason, o.field)
            return Hold(o.rule, o.reason)
    res = effective_resources(limits, request)
    return Accept(memory_mb=res.memory_mb, max_runtime_s=res.max_runtime_s)


# (run this after the answer is sent, database): see `ensure_flow_run`.
Deferred = tuple[Callable[[Callable[[], None]], None], Database]


def submit(
    ctx: OrgContext,
    session: Session,
    gateway: PrefectGateway,
    spec: SubmitSpec,
    *,
    defer: Deferred | None = None,
    settings: Settings | None = None,
) -> tuple[Job, bool]:
    """Admit and record a job, then create its flow run. Returns (job, created).

    ``created`` is False when ``idempotency_key`` matched an earlier job of this user:
    that job is returned unchanged (its run made if it is still missing).
    """
    deployments: dict[str, Deployment | None] = {}  # looked up once for both
    spec = track_git(ctx, session, spec, settings, deployments)
    admitted = admit(ctx, session, spec, deployments=deployments)
    job = admitted.job
    if not admitted.created:
        session.commit()
        ensure_flow_run(session, gateway, job)
        return job, False
    try:
        session.commit()
    except IntegrityError:
        # The same idempotency key committed by a parallel request first (or the
        # deployment was deleted meanwhile).
        session.rollback()
        existing = (
            _by_idempotency_key(session, ctx.org.id, ctx.user.id, spec.idempotency_key)
            if spec.idempotency_key is not None
            else None
        )
        if existing is None:
            raise Conflict(
                "The deployment changed while the job was submitted; submit it again.",
                code="conflict",
            ) from None
        session.commit()
        ensure_flow_run(session, gateway, existing)
        return existing, False
    admitted.record_metrics()
    ensure_flow_run(
        session,
        gateway,
        job,
        deployment=admitted.deployment,
        org=ctx.org,
        user=ctx.user,
        defer=defer,
    )
    return job, True


@dataclass(frozen=True)
class Admitted:
    """One submission admitted in the caller's transaction (not committed yet)."""

    job: Job
    created: bool  # False: the idempotency key named an earlier job, returned as is
    decision: Accept | Hold | None = None
    deployment: Deployment | None = None

    def record_metrics(self) -> None:
        """After the commit: the decision's metrics."""
        if self.decision is not None:
            metrics.record_decision(self.decision)
            if isinstance(self.decision, Accept):
                metrics.observe_dispatch_latency(0.0)


def admit(
    ctx: OrgContext,
    session: Session,
    spec: SubmitSpec,
    *,
    counter: AdmissionCounter | None = None,
    deployments: dict[str, Deployment | None] | None = None,
) -> Admitted:
    """Admission and the ledger row (with its audit row and idempotency key) in the
    caller's write transaction, under the org's admission lock; no commit, no Prefect.
    Raises the rejection (nothing added). Rows added earlier in the same transaction
    are counted, so a batch admits exactly as the same singles in order: from the
    ledger (autoflush), or from `counter` (the batch's counts kept in memory)."""
    prep = _prepare(ctx, session, spec, deployments)
    org, user = ctx.org, ctx.user
    if counter is not None:
        snapshot = counter.snapshot(prep.request, _dep_id(prep))
    else:
        snapshot = admission_snapshot(
            session, org, user.id, ctx.role, prep.request, lock=True, deployment=prep.deployment
        )
    if spec.idempotency_key is not None:
        existing = _by_idempotency_key(session, org.id, user.id, spec.idempotency_key)
        if existing is not None:
            return Admitted(existing, False)
    decision = decide(snapshot)
    if isinstance(decision, Reject):
        log.info("job rejected: org=%s user=%s rule=%s", org.slug, user.name, decision.rule)
        metrics.record_decision(decision)
        raise rejection(decision)
    assert prep.deployment is not None  # known_deployment passed
    resources = effective_resources(snapshot.limits, prep.request)
    job = ledger.create(
        session,
        ledger.event_for(decision),
        actor=user,
        decision=decision,
        audit_after={
            "deployment": prep.deployment.name,
            "machine_type": prep.request.machine_type,
            "memory_mb": resources.memory_mb,
            "max_runtime_s": resources.max_runtime_s,
            "priority": spec.priority,
        },
        org_id=org.id,
        user_id=user.id,
        deployment_id=prep.deployment.id,
        source="api",
        machine_type=prep.request.machine_type,
        parameters=prep.parameters,
        memory_mb=resources.memory_mb,
        max_runtime_s=resources.max_runtime_s,
        priority=spec.priority,
        tags=prep.tags,
        inputs=prep.inputs,
        code=dict(spec.code) if spec.code is not None else prep.deployment.code,
        job_metadata={
            REQUESTED_KEY: {"memory_mb": spec.memory_mb, "max_runtime_s": spec.max_runtime_s},
            **({OUTPUTS_KEY: prep.outputs} if prep.outputs else {}),
        },
        idempotency_key=spec.idempotency_key,
        image=dict(spec.image) if spec.image else None,
    ).job
    _link_inputs(session, job)
    if counter is not None:
        counter.add(decision, job.machine_type, job.deployment_id)
    return Admitted(job, True, decision, prep.deployment)


def track_git(
    ctx: OrgContext,
    session: Session,
    spec: SubmitSpec,
    settings: Settings | None,
    deployments: dict[str, Deployment | None] | None = None,
) -> SubmitSpec:
    """A `--track` Git deployment's branch resolved again for this submission: the job
    records the commit it names now. Git is asked outside any transaction (the read one
    ends first); a failure fails the submission with flows.git_sources' 422."""
    if spec.code is not None:  # a rerun: exactly the old job's commit
        return spec
    dep = find_deployment(session, ctx.org, spec.deployment, viewer=ctx.viewer)
    if deployments is not None:
        deployments[spec.deployment] = dep
    code = dict(dep.code) if dep is not None and dep.code else None
    if dep is None or code is None or not git_sources.is_git(code) or not code.get("track"):
        return spec
    repository, ref, track = git_sources.requested(code)
    project = session.get(Project, dep.project_id) if dep.project_id else None
    credential = (
        git_sources.credential_for(session, ctx.org, project, url=repository, settings=settings)
        if project is not None
        else None
    )
    session.commit()
    commit = git_sources.resolve(repository, ref, credential, settings=settings)
    return replace(spec, code=git_sources.pinned(repository, ref, commit, track))


def rerun_spec(session: Session, job: Job) -> SubmitSpec:
    """A submission of exactly what `job` ran: its deployment, parameters, pinned input
    versions and code (even if the deployment was redeployed since), and its requests."""
    dep = session.get(Deployment, job.deployment_id) if job.deployment_id else None
    if dep is None:
        raise Conflict(
            "The job's deployment no longer exists, so it cannot run again.",
            code="deployment_gone",
        )
    requested = (job.job_metadata or {}).get(REQUESTED_KEY) or {}
    return SubmitSpec(
        deployment=dep.name,
        parameters=dict(job.parameters or {}),
        machine_type=job.machine_type,
        memory_mb=requested.get("memory_mb"),
        max_runtime_s=requested.get("max_runtime_s"),
        inputs=[
            {"name": i["name"], "dataset": i["dataset"], "version": i["version"]}
            for i in job.inputs or []
        ],
        outputs=list((job.job_metadata or {}).get(OUTPUTS_KEY) or []),
        priority=job.priority,
        tags=list(job.tags or []),
        code=dict(job.code) if job.code else None,
    )


def rerun(
    ctx: OrgContext,
    session: Session,
    gateway: PrefectGateway,
    job_id: uuid.UUID,
    *,
    defer: Deferred | None = None,
) -> Job:
    """Submit again what the job ran (`rerun_spec`), through admission like any
    submission, as the caller. Members rerun their own jobs; admins anyone's."""
    ctx.require(Permission.jobs_submit)
    old = get_job(ctx, session, job_id)
    spec = rerun_spec(session, old)
    if spec.code is None and old.code is None:
        dep = find_deployment(session, ctx.org, spec.deployment, viewer=ctx.viewer)
        if dep is not None and dep.code:
            # The old job ran code already on the machines; its deployment ships code
            # now: say so rather than run something else.
            raise Conflict(
                "The job ran code from the machines' own copy and its deployment now ships "
                "a bundle; rerunning would not run the same code.",
                code="code_changed",
            )
    job, _ = submit(ctx, session, gateway, spec, defer=defer)
    return job


def _by_idempotency_key(
    session: Session, org_id: uuid.UUID, user_id: uuid.UUID, key: str
) -> Job | None:
    return session.scalars(
        select(Job).where(Job.org_id == org_id, Job.user_id == user_id, Job.idempotency_key == key)
    ).first()


# -------------------------------------------------------------- the flow run


def run_name(deployment: str, user: str, job_id: uuid.UUID) -> str:
    return f"{deployment}-{user}-{job_id.hex[:8]}"


SCHEDULED_FOR_KEY: Final = "scheduled_for"


def scheduled_time_of(job: Job) -> datetime | None:
    """When a schedule's fire is due (None: as soon as released)."""
    value = (job.job_metadata or {}).get(SCHEDULED_FOR_KEY)
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def job_variables_for(dep: Deployment, job: Job) -> dict[str, Any]:
    """The deployment's job variables plus the limits the worker enforces."""
    variables = dict(dep.job_variables or {})
    env = dict(variables.get("env") or {})
    env.update(
        CSHARE_JOB_ID=str(job.id),
        CSHARE_MAX_RUNTIME_S=str(job.max_runtime_s),
        CSHARE_MEMORY_MB=str(job.memory_mb),
    )
    variables["env"] = env
    return variables


def create_run(
    gateway: PrefectGateway, job: Job, deployment: Deployment, org_slug: str, user_name: str
) -> FlowRunRef:
    """Prefect's run of `job` (created, or found again by its key: the job id). Touches
    no session, so batches call it from several threads."""
    assert deployment.prefect_deployment_id is not None
    held = job.state == HELD
    return gateway.create_flow_run(
        deployment.prefect_deployment_id,
        idempotency_key=str(job.id),
        parameters=job.parameters,
        name=run_name(deployment.name, user_name, job.id),
        tags=[*run_tags(org_slug, user_name, job.machine_type), *job.tags],
        held=held,
        hold_reason=job.reason if held else None,
        job_variables=job_variables_for(deployment, job),
        scheduled_time=None if held else scheduled_time_of(job),
    )


def ensure_flow_run(
    session: Session,
    gateway: PrefectGateway,
    job: Job,
    *,
    deployment: Deployment | None = None,
    org: Organization | None = None,
    user: User | None = None,
    defer: Deferred | None = None,
) -> FlowRunRef | None:
    """Create the job's flow run if it has none yet (idempotent: the key is the job id).

    Call outside a transaction. Returns None when Prefect is unavailable (the dispatcher
    tries again later) or when the job needs no run. A permanent refusal by Prefect
    (its deployment was deleted behind our back) fails the job with the reason.

    `defer`: store the run id after the answer is sent (`(function, database)`), which
    takes one transaction off the submission's latency. Safe: until it is stored, the
    run is found again by its key (the dispatcher's missing-run step), and a job
    cancelled meanwhile gets its run cancelled when the id is stored.
    """
    if job.flow_run_id is not None or job.state in FINAL_STATES:
        return None
    deployment = deployment or (
        session.get(Deployment, job.deployment_id) if job.deployment_id else None
    )
    org = org or session.get(Organization, job.org_id)
    user = user or session.get(User, job.user_id)
    session.commit()
    if deployment is None or deployment.prefect_deployment_id is None or org is None:
        fail_job(session, job.id, "The job's deployment no longer exists.")
        return None
    user_name = user.name if user is not None else "unknown"
    try:
        ref = create_run(gateway, job, deployment, org.slug, user_name)
    except Unavailable as exc:
        log.warning("flow run for job %s not created yet (dispatcher retries): %s", job.id, exc)
        return None
    except DomainError as exc:
        log.warning("Prefect refused the flow run of job %s: %s", job.id, exc.detail)
        fail_job(session, job.id, f"Prefect refused to create the run: {exc.detail}")
        return None
    job.flow_run_id = ref.id
    if defer is not None:
        schedule, db = defer
        schedule(lambda: _attach_later(db, gateway, job.id, ref))
        return ref
    state = attach_flow_run(session, job.id, ref)
    settle_after_attach(gateway, ref, state)
    return ref


def _attach_later(
    db: Database, gateway: PrefectGateway, job_id: uuid.UUID, ref: FlowRunRef
) -> None:
    with db.session() as session:
        state = attach_flow_run(session, job_id, ref)
    settle_after_attach(gateway, ref, state)


def attach_flow_run(session: Session, job_id: uuid.UUID, ref: FlowRunRef) -> str | None:
    """Store the run id (first writer wins); returns the job's state at that moment."""
    return attach_flow_runs(session, [(job_id, ref)])[0]


def attach_flow_runs(
    session: Session, refs: Sequence[tuple[uuid.UUID, FlowRunRef]]
) -> list[str | None]:
    """`attach_flow_run` for many jobs in one transaction; their states, in order."""
    states = [_attach_one(session, job_id, ref) for job_id, ref in refs]
    session.commit()
    return states


def _attach_one(session: Session, job_id: uuid.UUID, ref: FlowRunRef) -> str | None:
    state = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.flow_run_id.is_(None))
        .values(flow_run_id=ref.id, prefect_state=ref.state_type.value, updated_at=utcnow())
        .returning(Job.state)
    )
    if state is None:  # attached already (by the dispatcher or a retry)
        state = session.scalar(select(Job.state).where(Job.id == job_id))
    return state


def settle_after_attach(gateway: PrefectGateway, ref: FlowRunRef, state: str | None) -> None:
    # The job moved while its run was being created: cancelled meanwhile, or released by
    # the dispatcher before the run existed. Best effort; the dispatcher reconciles both.
    try:
        if state in FINAL_STATES:
            gateway.cancel_flow_run(ref.id, "The job ended before its run started.")
        elif state == SCHEDULED and ref.is_held:
            gateway.release_flow_run(ref.id)
    except DomainError as exc:
        log.info("run %s left for the dispatcher to settle: %s", ref.id, exc.detail)


def fail_job(session: Session, job_id: uuid.UUID, reason: str) -> None:
    job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).first()
    if job is not None:
        ledger.apply(session, job, JobEvent.fail, reason=reason, prefect_state="")
    session.commit()


# ----------------------------------------------------------------------- reads


def visible_jobs(viewer: Viewer) -> ColumnElement[bool]:
    """`policies.access.job_view_scope` and `policies.visibility` as SQL: the one WHERE
    clause of job lists."""
    whose = scope_clause(
        access.job_view_scope(viewer), Job.org_id, viewer.org_id, Job.user_id == viewer.user_id
    )
    return and_(
        whose,
        or_(
            Job.deployment_id.is_(None),
            Job.deployment_id.in_(visibility.visible_deployment_ids(viewer)),
        ),
    )


def has_tag(session: Session, tag: str) -> ColumnElement[bool]:
    """`jobs.tags` holds `tag`: JSONB containment on PostgreSQL (GIN-indexed, migration
    0032), json_each on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        return type_coerce(Job.tags, JSONB).contains([tag])
    each = func.json_each(Job.tags).table_valued("value")
    return exists(select(literal(1)).select_from(each).where(each.c.value == tag))


def get_job(ctx: OrgContext, session: Session, job_id: uuid.UUID) -> Job:
    job = visibility.visible_job(session, ctx.viewer, job_id)
    if job is None:
        raise NotFound("No such job in this organization.", code="job_not_found")
    return job


def queue_position(session: Session, job: Job) -> int | None:
    """1-based place of a held job in its owner's queue (the dispatcher's order)."""
    if job.state != HELD:
        return None
    ahead = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(
            Job.org_id == job.org_id,
            Job.user_id == job.user_id,
            Job.state == HELD,
            Job.id != job.id,
            or_(
                Job.priority > job.priority,
                and_(
                    Job.priority == job.priority,
                    or_(
                        Job.created_at < job.created_at,
                        and_(Job.created_at == job.created_at, Job.id < job.id),
                    ),
                ),
            ),
        )
    )
    return int(ahead or 0) + 1


def _position_for_new(
    session: Session, org_id: uuid.UUID, user_id: uuid.UUID, priority: int
) -> int:
    ahead = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(
            Job.org_id == org_id,
            Job.user_id == user_id,
            Job.state == HELD,
            Job.priority >= priority,
        )
    )
    return int(ahead or 0) + 1


def list_jobs(
    ctx: OrgContext,
    session: Session,
    *,
    state: str | None = None,
    user: str | None = None,
    deployment: str | None = None,
    tags: Sequence[str] = (),
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[tuple[Job, str, str | None]], int]:
    """A page of jobs, newest first, with the owner's name and the deployment's name.

    Members see their own jobs; admins everyone's (and may filter by ``user``).
    ``tags``: only jobs carrying every one of them.
    """
    viewer = ctx.viewer
    stmt = (
        select(Job, User.name, Deployment.name)
        .join(User, User.id == Job.user_id)
        .outerjoin(Deployment, Deployment.id == Job.deployment_id)
        .where(visible_jobs(viewer))
    )
    if state is not None:
        if state not in ALL_STATES:
            raise Invalid(
                f"Unknown state '{state}' (one of: {', '.join(sorted(ALL_STATES))}).",
                field="state",
            )
        stmt = stmt.where(Job.state == state)
    if user is not None and user not in (ctx.user.name, str(ctx.user.id)):
        # Naming someone else is asking for everyone's jobs: 403, not an empty page.
        access.require(access.job_view_scope(viewer) is Scope.ALL, Permission.jobs_view_all)
        try:
            stmt = stmt.where(Job.user_id == uuid.UUID(user))
        except ValueError:
            stmt = stmt.where(User.name == user)
    elif user is not None:
        stmt = stmt.where(Job.user_id == ctx.user.id)
    if deployment is not None:
        stmt = stmt.where(Deployment.name == deployment)
    for tag in validate_tags(list(tags), field_name="tag"):
        stmt = stmt.where(has_tag(session, tag))
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.execute(
        stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    ).all()
    return [(job, user_name, dep_name) for job, user_name, dep_name in rows], int(total)


def job_logs(
    ctx: OrgContext,
    session: Session,
    gateway: PrefectGateway,
    job_id: uuid.UUID,
    *,
    offset: int = 0,
    limit: int = 200,
) -> tuple[Job, list[LogLine]]:
    job = get_job(ctx, session, job_id)
    session.commit()
    if job.flow_run_id is None:
        return job, []
    return job, gateway.read_logs(job.flow_run_id, offset=offset, limit=limit)


# ---------------------------------------------------------------------- cancel


def cancel(ctx: OrgContext, session: Session, gateway: PrefectGateway, job_id: uuid.UUID) -> Job:
    """Cancel a job: held (or not yet in Prefect) -> cancelled at once; otherwise
    cancelling until Prefect confirms (the worker stops the process)."""
    job = get_job(ctx, session, job_id)
    facts, viewer = JobFacts.of(job), ctx.viewer
    access.require(
        access.can_cancel_job(viewer, facts), access.cancel_job_permission(viewer, facts)
    )
    # Re-read under a row lock (PostgreSQL) so a release cannot interleave.
    session.refresh(job, with_for_update=True)
    if job.state == CANCELLING:
        session.commit()
        return job
    if job.state in FINAL_STATES:
        raise Conflict(f"The job is already {job.state}.", code="job_finished")
    reason = f"Cancelled by {ctx.user.name}."
    event = JobEvent.cancel if job.state == HELD or job.flow_run_id is None else None
    ledger.apply(session, job, event or JobEvent.request_cancel, actor=ctx.user, reason=reason)
    session.commit()
    if job.flow_run_id is not None:
        cancel_in_prefect(session, gateway, job, reason)
    return job


def cancel_in_prefect(session: Session, gateway: PrefectGateway, job: Job, reason: str) -> None:
    """Ask Prefect to stop the job's run; record what it says. Prefect being down is not
    an error here: the dispatcher repeats this until Prefect has settled the run."""
    assert job.flow_run_id is not None
    try:
        ref = gateway.cancel_flow_run(job.flow_run_id, reason)
    except DomainError as exc:
        log.info("cancel of run %s left to the dispatcher: %s", job.flow_run_id, exc.detail)
        return
    finalize_cancel(session, job, ref)


def finalize_cancel(session: Session, job: Job, ref: FlowRunRef) -> None:
    if ref.state_type in (StateType.CANCELLED, StateType.CANCELLING):
        session.refresh(job, with_for_update=True)
        if ref.state_type is StateType.CANCELLED and job.state == CANCELLING:
            ledger.apply(session, job, JobEvent.observe_cancelled, prefect_state="CANCELLED")
        else:
            job.prefect_state = ref.state_type.value
    session.commit()
    session.refresh(job)


def summary_times(job: Job) -> dict[str, datetime | None]:
    return {
        "created_at": job.created_at,
        "released_at": job.released_at,
        "claimed_at": job.claimed_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "cancel_requested_at": job.cancel_requested_at,
    }
