"""Batch submission: up to `MAX_BATCH` jobs admitted in one write transaction.

Each item goes through exactly what a single submission does (`flows.jobs.admit`: its
checks, admission under the org's lock, the ledger row with its audit row and
idempotency key), in order, in ONE transaction: the lock is taken and the ledger
counted once (`flows.usage.AdmissionCounter`), and every job admitted before an item
is counted for it, so a batch that crosses a limit is admitted,
held or refused item by item exactly as the same singles sent one after another.
An item that fails (bad parameters, unknown deployment, a refusing rule) gets its own
error and adds nothing; the others go on.

After the commit the Prefect runs are created like a single submission's (at submit,
idempotency key = job id), several at once, and their ids stored in one transaction
after the answer (`defer`) or before it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Final

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flows import jobs
from flows.gateway import FlowRunRef, PrefectGateway
from flows.models import FINAL_STATES, Deployment, Job
from flows.usage import AdmissionCounter
from orgs.config import Settings
from orgs.context import OrgContext
from orgs.db import Database
from policies.errors import Conflict, DomainError, Invalid, Unavailable
from policies.permissions import Permission

log = logging.getLogger(__name__)

__all__ = ["MAX_BATCH", "ItemResult", "submit_batch"]

MAX_BATCH: Final = 1000
# Prefect calls in flight for one batch (the gateway bounds the total anyway).
RUN_CREATION_THREADS: Final = 8


@dataclass(frozen=True)
class ItemResult:
    """One item of a batch: its job (created, or found by its idempotency key) or the
    error that refused it."""

    index: int
    job: Job | None = None
    created: bool = False
    error: DomainError | None = None


def submit_batch(
    ctx: OrgContext,
    session: Session,
    gateway: PrefectGateway,
    specs: Sequence[jobs.SubmitSpec | DomainError],
    *,
    defer: jobs.Deferred | None = None,
    settings: Settings | None = None,
) -> list[ItemResult]:
    """Admit and record `specs` in one transaction, then create their runs.

    An item given as a `DomainError` (its request could not even be built) is reported
    as that error. Raises only for the batch as a whole: too many items, no right to
    submit.
    """
    ctx.require(Permission.jobs_submit)
    if len(specs) > MAX_BATCH:
        raise Invalid(
            f"A batch holds at most {MAX_BATCH} jobs; this one has {len(specs)}.",
            field="jobs",
            code="batch_too_large",
        )
    specs = _track_git(ctx, session, specs, settings)
    try:
        results, admitted = _admit_all(ctx, session, specs)
        session.commit()
    except IntegrityError:
        # A parallel request committed one of the idempotency keys first (or a
        # deployment was deleted meanwhile): once more, which finds those jobs.
        session.rollback()
        try:
            results, admitted = _admit_all(ctx, session, specs)
            session.commit()
        except IntegrityError:
            session.rollback()
            raise Conflict(
                "The deployments changed while the jobs were submitted; submit them again.",
                code="conflict",
            ) from None
    for item in admitted:
        item.record_metrics()
    _create_runs(session, gateway, ctx, [r.job for r in results if r.job is not None], defer)
    return results


def _track_git(
    ctx: OrgContext,
    session: Session,
    specs: Sequence[jobs.SubmitSpec | DomainError],
    settings: Settings | None,
) -> list[jobs.SubmitSpec | DomainError]:
    # A tracking Git deployment's branch is resolved once per deployment per batch.
    pinned: dict[str, jobs.SubmitSpec | DomainError] = {}
    out: list[jobs.SubmitSpec | DomainError] = []
    for spec in specs:
        if isinstance(spec, DomainError) or spec.code is not None:
            out.append(spec)
            continue
        if spec.deployment not in pinned:
            try:
                pinned[spec.deployment] = jobs.track_git(ctx, session, spec, settings)
            except DomainError as exc:
                pinned[spec.deployment] = exc
        first = pinned[spec.deployment]
        if isinstance(first, DomainError):
            out.append(first)
        else:
            out.append(replace(spec, code=first.code))
    return out


def _admit_all(
    ctx: OrgContext, session: Session, specs: Sequence[jobs.SubmitSpec | DomainError]
) -> tuple[list[ItemResult], list[jobs.Admitted]]:
    results: list[ItemResult] = []
    admitted: list[jobs.Admitted] = []
    # The org lock and the ledger's counts once for the batch (kept up to date in
    # memory), each deployment looked up once.
    counter = AdmissionCounter(session, ctx.org, ctx.user.id, ctx.role)
    deployments: dict[str, Deployment | None] = {}
    for index, spec in enumerate(specs):
        if isinstance(spec, DomainError):
            results.append(ItemResult(index, error=spec))
            continue
        try:
            item = jobs.admit(ctx, session, spec, counter=counter, deployments=deployments)
        except DomainError as exc:
            # Raised before anything of this item was added (checks, admission).
            results.append(ItemResult(index, error=exc))
            continue
        results.append(ItemResult(index, job=item.job, created=item.created))
        if item.created:
            admitted.append(item)
    return results, admitted


def _create_runs(
    session: Session,
    gateway: PrefectGateway,
    ctx: OrgContext,
    batch: list[Job],
    defer: jobs.Deferred | None,
) -> None:
    """The runs the jobs lack, several at once; their ids stored in one transaction."""
    todo = list(
        {j.id: j for j in batch if j.flow_run_id is None and j.state not in FINAL_STATES}.values()
    )
    if not todo:
        return
    wanted = {j.deployment_id for j in todo}
    deployments = {
        d.id: d for d in session.scalars(select(Deployment).where(Deployment.id.in_(wanted)))
    }
    session.commit()
    user_name = ctx.user.name

    def one(job: Job) -> tuple[Job, FlowRunRef | DomainError]:
        dep = deployments.get(job.deployment_id) if job.deployment_id else None
        if dep is None or dep.prefect_deployment_id is None:
            return job, Conflict("The job's deployment no longer exists.")
        try:
            return job, jobs.create_run(gateway, job, dep, ctx.org.slug, user_name)
        except DomainError as exc:
            return job, exc

    with ThreadPoolExecutor(min(RUN_CREATION_THREADS, len(todo))) as pool:
        outcomes = list(pool.map(one, todo))
    refs: list[tuple[uuid.UUID, FlowRunRef]] = []
    for job, outcome in outcomes:
        if isinstance(outcome, Unavailable):
            log.warning("flow run for job %s not created yet (dispatcher retries)", job.id)
        elif isinstance(outcome, DomainError):
            log.warning("Prefect refused the flow run of job %s: %s", job.id, outcome.detail)
            jobs.fail_job(session, job.id, f"Prefect refused to create the run: {outcome.detail}")
        else:
            job.flow_run_id = outcome.id
            refs.append((job.id, outcome))
    if not refs:
        return
    if defer is not None:
        schedule, db = defer
        schedule(lambda: _attach_all(db, gateway, refs))
    else:
        _attach(session, gateway, refs)


def _attach_all(
    db: Database, gateway: PrefectGateway, refs: list[tuple[uuid.UUID, FlowRunRef]]
) -> None:
    with db.session() as session:
        _attach(session, gateway, refs)


def _attach(
    session: Session, gateway: PrefectGateway, refs: list[tuple[uuid.UUID, FlowRunRef]]
) -> None:
    states = jobs.attach_flow_runs(session, refs)
    for (_job_id, ref), state in zip(refs, states, strict=True):
        jobs.settle_after_attach(gateway, ref, state)
