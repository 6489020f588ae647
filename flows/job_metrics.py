"""Metric series over steps: what `log_metadata(step=..., loss=...)` records per job.

A point is (job, key, step, value, time). Logging a step again replaces its value (a
retried report is harmless). Bounded, so one chatty job cannot fill the database: at
most `MAX_KEYS_PER_JOB` keys per job and `MAX_POINTS_PER_KEY` points per key; a report
past either is refused whole (422 naming the key), nothing of it stored.

Free-form metadata without a step stays in the job's lineage record
(`flows.lineage.merge_job_metadata`); `latest_values` shows both, series first.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from datasets.models import JobLineage
from flows.models import Job, JobMetric
from orgs.db import utcnow
from policies.errors import Invalid

MAX_KEYS_PER_JOB: Final = 50
MAX_POINTS_PER_KEY: Final = 10_000
MAX_STEP: Final = 2**31 - 1
KEY_RE: Final = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Point:
    step: int
    value: float
    logged_at: datetime


@dataclass(frozen=True, slots=True)
class Series:
    key: str
    points: list[Point]  # by step

    @property
    def latest(self) -> Point:
        return self.points[-1]


def _number(key: str, value: Any) -> float:
    # bool is an int in Python, but `True` is not a measurement.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(
            f"Metric {key!r} must be a number when logged with a step (got "
            f"{type(value).__name__}); log text without a step.",
            field=f"values.{key}",
            code="metric_not_a_number",
        )
    number = float(value)
    if not math.isfinite(number):
        raise Invalid(
            f"Metric {key!r} must be a finite number (got {value!r}).",
            field=f"values.{key}",
            code="metric_not_a_number",
        )
    return number


def validate_points(step: Any, values: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """The step and the values as numbers, or 422 naming what is wrong."""
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise Invalid(
            f"The step must be a whole number from 0 to {MAX_STEP} (got {step!r}).",
            field="step",
            code="bad_step",
        )
    if not values:
        raise Invalid("Nothing to log: give at least one value with the step.", field="values")
    numbers: dict[str, float] = {}
    for key, value in values.items():
        if not KEY_RE.match(key):
            raise Invalid(
                f"Metric name {key!r} is invalid: 1-64 letters, digits or ._:/@+- only.",
                field=f"values.{key}",
                code="bad_metric_name",
            )
        numbers[key] = _number(key, value)
    return step, numbers


def record_points(session: Session, job: Job, step: Any, values: Mapping[str, Any]) -> int:
    """Store `values` at `step` for `job` (replacing that step's earlier values), within
    the bounds. Returns how many points were written. No commit."""
    step, numbers = validate_points(step, values)
    counts: dict[str, int] = dict(
        session.execute(
            select(JobMetric.key, func.count())
            .where(JobMetric.job_id == job.id)
            .group_by(JobMetric.key)
        )
        .tuples()
        .all()
    )
    new_keys = [k for k in numbers if k not in counts]
    if len(counts) + len(new_keys) > MAX_KEYS_PER_JOB:
        raise Invalid(
            f"A job may log at most {MAX_KEYS_PER_JOB} metric series; this one has "
            f"{len(counts)} and {', '.join(map(repr, new_keys))} would add "
            f"{len(new_keys)} more.",
            field="values",
            code="too_many_metrics",
        )
    full = [k for k in numbers if counts.get(k, 0) >= MAX_POINTS_PER_KEY]
    if full:
        taken = set(
            session.scalars(
                select(JobMetric.key).where(
                    JobMetric.job_id == job.id, JobMetric.key.in_(full), JobMetric.step == step
                )
            )
        )
        over = [k for k in full if k not in taken]  # replacing a step adds no point
        if over:
            raise Invalid(
                f"Metric {over[0]!r} already has {MAX_POINTS_PER_KEY} points, the most a "
                "series may hold; log less often (every n-th step).",
                field=f"values.{over[0]}",
                code="too_many_points",
            )
    now = utcnow()
    rows = [
        {"job_id": job.id, "key": k, "step": step, "value": v, "logged_at": now}
        for k, v in numbers.items()
    ]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(JobMetric).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=["job_id", "key", "step"],
        set_={"value": stmt.excluded.value, "logged_at": stmt.excluded.logged_at},
    )
    session.execute(stmt)
    return len(rows)


def series_of(session: Session, job_id: uuid.UUID, *, key: str | None = None) -> list[Series]:
    """The job's series by key name, each ordered by step."""
    stmt = select(JobMetric.key, JobMetric.step, JobMetric.value, JobMetric.logged_at).where(
        JobMetric.job_id == job_id
    )
    if key is not None:
        stmt = stmt.where(JobMetric.key == key)
    grouped: dict[str, list[Point]] = {}
    for k, step, value, at in session.execute(stmt.order_by(JobMetric.key, JobMetric.step)):
        grouped.setdefault(k, []).append(Point(step, value, at))
    return [Series(k, points) for k, points in grouped.items()]


def series_of_jobs(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Series]]:
    """`series_of` for several jobs at once (the compare view)."""
    out: dict[uuid.UUID, dict[str, list[Point]]] = {j: {} for j in job_ids}
    if job_ids:
        for job_id, k, step, value, at in session.execute(
            select(
                JobMetric.job_id,
                JobMetric.key,
                JobMetric.step,
                JobMetric.value,
                JobMetric.logged_at,
            )
            .where(JobMetric.job_id.in_(list(job_ids)))
            .order_by(JobMetric.job_id, JobMetric.key, JobMetric.step)
        ):
            out[job_id].setdefault(k, []).append(Point(step, value, at))
    return {j: [Series(k, p) for k, p in keys.items()] for j, keys in out.items()}


def latest_values(
    session: Session, job: Job, series: Sequence[Series] | None = None
) -> dict[str, Any]:
    """Each series' last value, then the scalar numbers logged without a step
    (`log_metadata({"accuracy": 0.93})`) that no series shadows."""
    series = series_of(session, job.id) if series is None else series
    out: dict[str, Any] = {s.key: s.latest.value for s in series}
    row = session.get(JobLineage, job.id)
    for key, value in (row.job_metadata if row is not None and row.job_metadata else {}).items():
        if key not in out and isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = value
    return out


__all__ = [
    "MAX_KEYS_PER_JOB",
    "MAX_POINTS_PER_KEY",
    "Point",
    "Series",
    "latest_values",
    "record_points",
    "series_of",
    "series_of_jobs",
    "validate_points",
]
