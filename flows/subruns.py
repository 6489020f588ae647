"""Subflow runs of a job: a job's flow that calls another `@flow` makes a flow run of its
own through the Prefect proxy; it is recorded here, under the job, so the job's
credential may write it and the people who see the job see it (api/prefect_proxy)."""

from __future__ import annotations

import uuid

from sqlalchemy.exc import IntegrityError

from flows.models import JobSubrun
from orgs.db import Database

__all__ = ["record"]


def record(
    db: Database, *, job_id: uuid.UUID, flow_run_id: uuid.UUID, parent_flow_run_id: uuid.UUID
) -> None:
    """Remember `flow_run_id` as a subflow run of `job_id` (idempotent: Prefect answers a
    repeated create with the same run)."""
    with db.session() as session:
        if session.get(JobSubrun, flow_run_id) is not None:
            return
        session.add(
            JobSubrun(flow_run_id=flow_run_id, job_id=job_id, parent_flow_run_id=parent_flow_run_id)
        )
        try:
            session.commit()
        except IntegrityError:  # recorded meanwhile by the same create, retried
            session.rollback()
