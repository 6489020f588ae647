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

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from sqlalchemy import select

from api.routers import jobs as job_routes
from api.web.chart import Line, line_chart
from api.web.core import OrgPage, PageRequires, redirect, render, settings_of
from api.web.routes_data import gateway_of
from datasets.access import can_read
from datasets.models import Dataset, DatasetVersion
from flows import containers, deployments, job_compare, job_metrics, job_tags, jobs, lineage
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
PageJobsTag = Annotated[OrgPage, Depends(PageRequires(Permission.jobs_tag_own))]

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


def _words(value: str) -> list[str]:
    """Tags typed into one field: separated by spaces or commas."""
    return [w for w in value.replace(",", " ").split() if w]


@router.get("/orgs/{org}/jobs")
def jobs_page(
    request: Request,
    page: PageJobsViewOwn,
    state: str = "",
    user: str = "",
    deployment: str = "",
    tag: Annotated[str, Query(max_length=400)] = "",
    offset: int = 0,
) -> Response:
    offset = max(0, min(offset, 10_000_000))
    filters = {
        "state": _clean(state),
        "user": _clean(user),
        "deployment": _clean(deployment),
        "tag": " ".join(_words(tag)) or None,
    }
    error = None
    try:
        rows, total = jobs.list_jobs(
            page.ctx,
            page.session,
            state=filters["state"],
            user=filters["user"],
            deployment=filters["deployment"],
            tags=_words(tag),
            limit=JOBS_PER_PAGE,
            offset=offset,
        )
    except DomainError as exc:  # an unknown state or tag, or a member filtering by someone else
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


def _metrics(page: OrgPage, job: Any) -> dict[str, Any]:
    """The latest value of each metric and a chart per series over steps."""
    series = job_metrics.series_of(page.session, job.id)
    latest = job_metrics.latest_values(page.session, job, series)
    by_key = {s.key: s for s in series}
    rows = [
        {
            "key": key,
            "value": value,
            "step": by_key[key].latest.step if key in by_key else None,
            "points": len(by_key[key].points) if key in by_key else None,
        }
        for key, value in latest.items()
    ]
    charts = [
        {
            "key": s.key,
            "svg": line_chart(
                [Line(s.key, [(p.step, p.value) for p in s.points])],
                title=f"{s.key} over steps",
                chart_id=f"metric-{i}",
            ),
        }
        for i, s in enumerate(series)
    ]
    return {"rows": rows, "charts": charts}


def _artifacts(page: OrgPage, job: Any) -> list[dict[str, Any]]:
    """The versions the job produced (`save_output`), with a download link where the
    viewer may read the dataset and the bytes are still there."""
    found = page.session.execute(
        select(DatasetVersion, Dataset)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(DatasetVersion.produced_by_job_id == job.id)
        .order_by(DatasetVersion.created_at)
    ).all()
    readable: dict[uuid.UUID, bool] = {}
    out = []
    for version, dataset in found:
        if dataset.id not in readable:
            readable[dataset.id] = can_read(page.session, page.ctx, dataset)
        out.append(
            {
                "dataset": dataset.name,
                "version": version.version,
                "sha256": version.sha256,
                "size": version.size,
                "kind": version.kind,
                "filename": version.filename,
                "file_count": version.file_count,
                "created_at": version.created_at,
                "download": readable[dataset.id] and version.tombstoned_at is None,
            }
        )
    return out


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
        can_tag=access.can_tag_job(page.ctx.viewer, JobFacts.of(job)),
        lineage=_lineage(page, job),
        metrics=_metrics(page, job),
        artifacts=_artifacts(page, job),
        times=jobs.summary_times(job),
        error=error,
    )


@router.get("/orgs/{org}/jobs/compare")
def compare_page(
    request: Request,
    page: PageJobsViewOwn,
    ids: Annotated[list[str] | None, Query(max_length=job_compare.MAX_JOBS * 2)] = None,
) -> Response:
    """Jobs side by side, their metrics overlaid. Without 2 jobs picked: how to pick."""
    picked = [i for i in ids or [] if i.strip()]
    result, error = None, ""
    if len(picked) >= 2 or any("," in i for i in picked):
        try:
            result = job_compare.compare(page.ctx, page.session, job_compare.parse_ids(picked))
        except DomainError as exc:
            if exc.code == "job_not_found":
                raise
            error = exc.detail
    charts = []
    if result is not None:
        for i, (key, lines) in enumerate(result.series.items()):
            charts.append(
                {
                    "key": key,
                    "svg": line_chart(
                        [Line(name, [(p.step, p.value) for p in s.points]) for name, s in lines],
                        title=f"{key} over steps, by job",
                        chart_id=f"compare-{i}",
                    ),
                }
            )
    return render(
        request,
        "job_compare.html",
        page=page,
        active="jobs",
        status_code=422 if error else 200,
        result=result,
        charts=charts,
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


@router.post("/orgs/{org}/jobs/{job_id}/tags")
def tag_job(
    request: Request,
    page: PageJobsTag,
    job_id: JobId,
    add: Annotated[str, Form(max_length=1400)] = "",
    remove: Annotated[str, Form(max_length=1400)] = "",
) -> Response:
    """Add tags (typed, separated by spaces or commas) or remove one (its button)."""
    try:
        job_tags.change_tags(
            page.ctx,
            page.session,
            gateway_of(request),
            job_id,
            add=_words(add),
            remove=_words(remove),
        )
    except DomainError as exc:
        if exc.code in ("job_not_found", "forbidden"):
            raise
        page.session.rollback()
        return _job_page(request, page, job_id, code=422, error=exc.detail)
    return redirect(page.url(f"/jobs/{job_id}"), notice="tagged")


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
