"""Jobs: the list with filters, one job's page (state, reason, lineage, logs), cancel, rerun.

Members see their own jobs and admins everyone's: `flows.jobs.list_jobs` and `get_job`
decide, as for `GET /orgs/{org}/jobs`. The list renders straight from the rows the
service returns (one query for the page, one for the count) so it stays fast with tens
of thousands of jobs; the job page uses the REST route's `job_out` (queue position,
Prefect UI link) so both show the same thing.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import Response

from api.routers import jobs as job_routes
from api.web.core import OrgPage, PageRequires, redirect, render, settings_of
from api.web.routes_data import gateway_of
from flows import containers, deployments, jobs, lineage
from flows.models import ALL_STATES, FINAL_STATES
from policies import access
from policies.access import JobFacts
from policies.errors import DomainError
from policies.permissions import Permission

log = logging.getLogger("cshare.web")

router = APIRouter()

PageJobsCancelOwn = Annotated[OrgPage, Depends(PageRequires(Permission.jobs_cancel_own))]
PageJobsSubmit = Annotated[OrgPage, Depends(PageRequires(Permission.jobs_submit))]
PageJobsViewOwn = Annotated[OrgPage, Depends(PageRequires(Permission.jobs_view_own))]

JOBS_PER_PAGE = 50
JobId = Annotated[uuid.UUID, PathParam()]
STATE_ORDER = (
    "held",
    "scheduled",
    "running",
    "cancelling",
    "completed",
    "failed",
    "crashed",
    "cancelled",
    "rejected",
)


def _clean(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


@router.get("/orgs/{org}/jobs")
def jobs_page(
    request: Request,
    page: PageJobsViewOwn,
    state: str = "",
    user: str = "",
    deployment: str = "",
    offset: int = 0,
) -> Response:
    offset = max(0, min(offset, 10_000_000))
    filters = {"state": _clean(state), "user": _clean(user), "deployment": _clean(deployment)}
    error = None
    try:
        rows, total = jobs.list_jobs(
            page.ctx,
            page.session,
            state=filters["state"],
            user=filters["user"],
            deployment=filters["deployment"],
            limit=JOBS_PER_PAGE,
            offset=offset,
        )
    except DomainError as exc:  # an unknown state, or a member filtering by someone else
        rows, total, error = [], 0, exc.detail
    return render(
        request,
        "jobs.html",
        page=page,
        active="jobs",
        status_code=422 if error else 200,
        rows=rows,
        total=total,
        offset=offset,
        per_page=JOBS_PER_PAGE,
        filters={k: v or "" for k, v in filters.items()},
        states=[s for s in STATE_ORDER if s in ALL_STATES],
        deployment_names=[
            d.name
            for d in deployments.list_deployments(page.session, page.org, viewer=page.ctx.viewer)
        ],
        error=error,
    )


def _lineage(page: OrgPage, job: Any) -> dict[str, Any] | None:
    """The job's record and graph; None (shown as unavailable) if it cannot be read."""
    try:
        record = lineage.job_record(page.session, job)
        graph = lineage.job_graph(page.session, page.ctx, job, depth=2)
    except DomainError as exc:
        log.info("lineage of job %s unavailable: %s", job.id, exc.detail)
        return None
    return {"record": record, "graph": graph.as_dict()}


def _job_page(
    request: Request, page: OrgPage, job_id: uuid.UUID, *, code: int = 200, error: str = ""
) -> Response:
    page.require(Permission.jobs_view_own)
    job = jobs.get_job(page.ctx, page.session, job_id)
    out = job_routes.job_out(job, page.session, settings_of(request), gateway_of(request))
    return render(
        request,
        "job.html",
        page=page,
        active="jobs",
        status_code=code,
        job=out,
        final=job.state in FINAL_STATES,
        can_cancel=job.state not in FINAL_STATES
        and access.can_cancel_job(page.ctx.viewer, JobFacts.of(job)),
        can_rerun=page.can(Permission.jobs_submit)
        and (job.deployment_id is not None or job.image is not None),
        lineage=_lineage(page, job),
        times=jobs.summary_times(job),
        error=error,
    )


@router.get("/orgs/{org}/jobs/{job_id}")
def job_page(request: Request, page: PageJobsViewOwn, job_id: JobId) -> Response:
    return _job_page(request, page, job_id)


@router.get("/orgs/{org}/jobs/{job_id}/logs")
def job_logs(request: Request, page: PageJobsViewOwn, job_id: JobId, offset: int = 0) -> Response:
    """The log panel (an htmx fragment, polled while the job is not over)."""
    lines: list[Any] = []
    problem = None
    try:
        job, lines = jobs.job_logs(
            page.ctx, page.session, gateway_of(request), job_id, offset=0, limit=200
        )
        state = job.state
    except DomainError as exc:
        if exc.code == "job_not_found":
            raise
        problem = f"The logs cannot be read right now: {exc.detail}"
        state = jobs.get_job(page.ctx, page.session, job_id).state
    return render(
        request,
        "_job_logs.html",
        page=page,
        lines=lines,
        problem=problem,
        job_id=job_id,
        final=state in FINAL_STATES,
    )


@router.post("/orgs/{org}/jobs/{job_id}/cancel")
def cancel_job(request: Request, page: PageJobsCancelOwn, job_id: JobId) -> Response:
    try:
        jobs.cancel(page.ctx, page.session, gateway_of(request), job_id)
    except DomainError as exc:
        if exc.code in ("job_not_found", "forbidden"):
            raise
        return _job_page(request, page, job_id, code=409, error=exc.detail)
    return redirect(page.url(f"/jobs/{job_id}"), notice="cancelled")


@router.post("/orgs/{org}/jobs/{job_id}/rerun")
def rerun_job(request: Request, page: PageJobsSubmit, job_id: JobId) -> Response:
    """Submit the job again: same deployment, parameters, machine type, resources,
    pinned input versions and code, or the same image (by digest) and command
    (`flows.containers.rerun`, as `cshare job rerun`)."""
    try:
        new = containers.rerun(
            page.ctx,
            page.session,
            gateway_of(request),
            job_id,
            pool_type=settings_of(request).work_pool_type,
        )
    except DomainError as exc:
        if exc.code in ("job_not_found",):
            raise
        page.session.rollback()
        return _job_page(request, page, job_id, code=422, error=exc.detail)
    return redirect(page.url(f"/jobs/{new.id}"), notice="rerun")
