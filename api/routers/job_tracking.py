"""Tracking runs: tags after submission, metric series over steps, several jobs compared
(under /orgs/{org}/jobs; registered before the jobs router so `jobs/compare` is not read
as a job id)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Requires, SessionDep, SettingsDep
from api.routers.deployments import GatewayDep
from api.routers.jobs import JobOut, job_out
from flows import job_compare, job_metrics, job_tags, jobs
from flows.deployments import MAX_TAGS
from orgs.context import OrgContext
from policies.permissions import Permission

router = APIRouter(tags=["jobs"])

JobsTag = Annotated[OrgContext, Depends(Requires(Permission.jobs_tag_own))]
JobsView = Annotated[OrgContext, Depends(Requires(Permission.jobs_view_own))]
JobId = Annotated[uuid.UUID, Path(alias="id", description="The job id.")]


class TagsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    add: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    remove: list[str] = Field(default_factory=list, max_length=MAX_TAGS)


class TagsOut(JobOut):
    added: list[str]
    removed: list[str]
    prefect_synced: bool | None = Field(
        description="The run's tags in Prefect were updated (null: the job has no run yet; "
        "false: Prefect could not be reached, the job's tags changed anyway)."
    )


class PointOut(BaseModel):
    step: int
    value: float
    logged_at: datetime


class SeriesOut(BaseModel):
    key: str
    count: int
    latest: PointOut
    points: list[PointOut]


class MetricsOut(BaseModel):
    job_id: uuid.UUID
    series: list[SeriesOut]
    latest: dict[str, Any] = Field(
        description="Each series' last value, and numbers logged without a step."
    )
    limits: dict[str, int]


class CompareOut(BaseModel):
    jobs: list[dict[str, Any]]
    parameters: list[dict[str, Any]] = Field(description="{key, values (per job), differs}")
    metrics: list[dict[str, Any]] = Field(description="{key, values: latest per job or null}")


def _point(p: job_metrics.Point) -> PointOut:
    return PointOut(step=p.step, value=p.value, logged_at=p.logged_at)


@router.get("/orgs/{org}/jobs/compare")
def compare_jobs(
    ctx: JobsView,
    session: SessionDep,
    ids: Annotated[
        list[str], Query(max_length=job_compare.MAX_JOBS, description="Job ids (2 to 10).")
    ],
) -> CompareOut:
    """Jobs side by side: parameters (and which differ), the latest value of each metric,
    duration, state. 404 if any job is not yours to see."""
    result = job_compare.compare(ctx, session, job_compare.parse_ids(ids))
    return CompareOut.model_validate(result.as_dict())


@router.patch("/orgs/{org}/jobs/{id}/tags")
def change_tags(
    job_id: JobId,
    body: TagsIn,
    ctx: JobsTag,
    session: SessionDep,
    settings: SettingsDep,
    gateway: GatewayDep,
) -> TagsOut:
    """Add and remove tags of a job (yours; admins any), e.g. `{"add": ["best"],
    "remove": ["draft"]}`. The flow run's tags in Prefect follow."""
    change = job_tags.change_tags(ctx, session, gateway, job_id, add=body.add, remove=body.remove)
    out = job_out(change.job, session, settings, gateway)
    return TagsOut(
        **out.model_dump(),
        added=change.added,
        removed=change.removed,
        prefect_synced=change.prefect_synced,
    )


@router.get("/orgs/{org}/jobs/{id}/metrics")
def job_metric_series(
    job_id: JobId,
    ctx: JobsView,
    session: SessionDep,
    key: Annotated[str | None, Query(max_length=64, description="One series only.")] = None,
) -> MetricsOut:
    """The metric series the job logged with `log_metadata(step=..., ...)`, each by step,
    with its latest value."""
    job = jobs.get_job(ctx, session, job_id)
    series = job_metrics.series_of(session, job.id, key=key)
    return MetricsOut(
        job_id=job.id,
        series=[
            SeriesOut(
                key=s.key,
                count=len(s.points),
                latest=_point(s.latest),
                points=[_point(p) for p in s.points],
            )
            for s in series
        ],
        latest=job_metrics.latest_values(session, job, series if key is None else None),
        limits={
            "keys_per_job": job_metrics.MAX_KEYS_PER_JOB,
            "points_per_key": job_metrics.MAX_POINTS_PER_KEY,
        },
    )
