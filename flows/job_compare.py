"""Several jobs side by side: parameters (which differ), the latest value of each metric,
duration and state, and the metric series for overlaid charts (`cshare job compare`,
`GET /orgs/{org}/jobs/compare`, the console's compare page).

Each job must be visible to the caller (`flows.jobs.get_job`): one invisible id makes
the whole answer 404, as it would alone.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from flows import job_metrics
from flows.job_metrics import Series
from flows.jobs import get_job
from flows.models import Deployment, Job
from orgs.context import OrgContext
from orgs.models import User
from policies.errors import Invalid

MAX_JOBS: Final = 10


@dataclass(frozen=True)
class Comparison:
    jobs: list[dict[str, Any]]
    parameters: list[dict[str, Any]]  # {key, values: [per job], differs}
    metrics: list[dict[str, Any]]  # {key, values: [latest per job or None]}
    series: dict[str, list[tuple[str, Series]]]  # key -> [(job label, series)]

    def as_dict(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "parameters": self.parameters, "metrics": self.metrics}


def parse_ids(raw: Sequence[str]) -> list[uuid.UUID]:
    """Job ids from `ids=a&ids=b` or `ids=a,b`; 422 for a bad id, fewer than 2 or more
    than `MAX_JOBS`."""
    ids: list[uuid.UUID] = []
    for part in (p.strip() for item in raw for p in item.split(",")):
        if not part:
            continue
        try:
            job_id = uuid.UUID(part)
        except ValueError:
            raise Invalid(f"{part!r} is not a job id.", field="ids") from None
        if job_id not in ids:
            ids.append(job_id)
    if not 2 <= len(ids) <= MAX_JOBS:
        raise Invalid(f"Compare 2 to {MAX_JOBS} different jobs (got {len(ids)}).", field="ids")
    return ids


def label(job: Job) -> str:
    return str(job.id)[:8]


def _same(values: list[Any]) -> bool:
    dumped = {json.dumps(v, sort_keys=True, default=str) for v in values}
    return len(dumped) <= 1


def compare(ctx: OrgContext, session: Session, ids: Sequence[uuid.UUID]) -> Comparison:
    jobs = [get_job(ctx, session, job_id) for job_id in ids]
    names = dict(
        session.execute(select(User.id, User.name).where(User.id.in_({j.user_id for j in jobs})))
        .tuples()
        .all()
    )
    dep_ids = {j.deployment_id for j in jobs if j.deployment_id is not None}
    deps = (
        dict(
            session.execute(
                select(Deployment.id, Deployment.name).where(Deployment.id.in_(dep_ids))
            )
            .tuples()
            .all()
        )
        if dep_ids
        else {}
    )
    all_series = job_metrics.series_of_jobs(session, [j.id for j in jobs])
    latest = [job_metrics.latest_values(session, j, all_series[j.id]) for j in jobs]
    out_jobs = []
    for job, values in zip(jobs, latest, strict=True):
        duration = (
            (job.ended_at - job.started_at).total_seconds()
            if job.started_at is not None and job.ended_at is not None
            else None
        )
        out_jobs.append(
            {
                "id": str(job.id),
                "label": label(job),
                "deployment": deps.get(job.deployment_id) if job.deployment_id else None,
                "user": names.get(job.user_id),
                "state": job.state,
                "created_at": job.created_at,
                "duration_s": duration,
                "tags": list(job.tags or []),
                "parameters": dict(job.parameters or {}),
                "metrics": values,
            }
        )
    param_keys = sorted({k for j in jobs for k in (j.parameters or {})})
    parameters = []
    for key in param_keys:
        per_job = [(j.parameters or {}).get(key) for j in jobs]
        parameters.append({"key": key, "values": per_job, "differs": not _same(per_job)})
    metric_keys = sorted({k for values in latest for k in values})
    metrics = [{"key": k, "values": [values.get(k) for values in latest]} for k in metric_keys]
    series: dict[str, list[tuple[str, Series]]] = {}
    for job in jobs:
        for s in all_series[job.id]:
            series.setdefault(s.key, []).append((label(job), s))
    return Comparison(out_jobs, parameters, metrics, dict(sorted(series.items())))


__all__ = ["MAX_JOBS", "Comparison", "compare", "label", "parse_ids"]
