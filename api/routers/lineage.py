"""Lineage: the graph around a dataset version or a job, a job's full record, and the
metadata a flow logs about itself (`flows.runtime.log_metadata`).

Reading is for members. Writing a job's record (metadata, how and where it ran) is for
the job's own token only (`JobOnly`): members, owners and admins included, never write
lineage. The run record is write-once: a field, once reported, is never replaced.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from api.deps import Requires, SessionDep
from api.job_credentials import JobOnly
from api.routers.datasets import JobId, MemberCaller, job_in_org
from datasets import catalog
from datasets.access import Caller
from flows import containers, job_metrics, lineage
from flows.models import Job
from orgs.context import OrgContext
from policies import access
from policies.access import CredentialRule, JobFacts, JobTokenUse
from policies.permissions import Permission

router = APIRouter(tags=["lineage"])

LineageRead = Annotated[OrgContext, Depends(Requires(Permission.datasets_read))]
JobView = Annotated[Caller, Depends(MemberCaller(Permission.jobs_view_own))]
JobRecordWrite = Annotated[
    Caller, Depends(JobOnly(Permission.jobs_view_own, use=JobTokenUse.write_record))
]
Depth = Annotated[int, Query(ge=0, le=lineage.MAX_DEPTH, description="Hops each way.")]


class NodeOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(description="'version:<uuid>' or 'job:<uuid>'.")
    type: str = Field(description="'dataset_version' or 'job'.")


class EdgeOut(BaseModel):
    source: str
    target: str
    kind: str = Field(description="'input' (version -> job) or 'output' (job -> version).")


class GraphOut(BaseModel):
    root: str
    nodes: list[NodeOut]
    edges: list[EdgeOut]
    truncated: bool


class JobLineageOut(GraphOut):
    job: dict[str, Any] = Field(description="Who, when, code, parameters, machine, resources.")
    rerun: dict[str, Any] = Field(description="A `POST /orgs/{org}/jobs` body to run it again.")


class MetadataIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    values: dict[str, Any] = Field(description="Metrics and free-form metadata; merged.")
    step: int | None = Field(
        default=None,
        description="With a step, every value is a number: one point of each metric's "
        "series over steps (flows.job_metrics; bounded), not merged into the metadata.",
    )


class RunRecordIn(BaseModel):
    """What the machine knows about a run. Each field is recorded once: sending it again
    with the same value is fine, with another value 409 `lineage_written`."""

    model_config = ConfigDict(extra="forbid")

    code: dict[str, Any] | None = Field(
        default=None, description="{source, git_commit, git_dirty} or {bundle_sha256}."
    )
    image: str | None = Field(default=None, max_length=512)
    image_digest: str | None = Field(
        default=None,
        max_length=80,
        description="A container job's image digest as pulled (sha256:...).",
    )
    machine: dict[str, Any] | None = Field(default=None, description="{name, hardware, ...}")
    parameters: dict[str, Any] | None = Field(default=None, description="As the flow ran.")
    resources_used: dict[str, Any] | None = Field(
        default=None, description="e.g. {max_rss_mb, cpu_s}."
    )


class MetadataOut(BaseModel):
    job_id: uuid.UUID
    metadata: dict[str, Any]
    points: int = Field(0, description="Metric points written (calls with a step).")


def writable_job(session: Session, caller: Caller, job_id: uuid.UUID) -> Job:
    """The job whose lineage the caller writes: its own token's job, else 404/403."""
    job = job_in_org(session, caller, job_id)
    access.require_rule(
        access.can_write_lineage(caller.viewer, JobFacts.of(job)), CredentialRule.lineage_job_only
    )
    return job


@router.get("/orgs/{org}/lineage")
def dataset_lineage(
    ctx: LineageRead,
    session: SessionDep,
    dataset: Annotated[str, Query(max_length=200, description="The dataset's name.")],
    version: Annotated[str | None, Query(max_length=20, description="Default: latest.")] = None,
    depth: Depth = 10,
) -> GraphOut:
    """Which jobs produced this version (and from what), and which jobs and outputs used it."""
    found = catalog.find_dataset(session, ctx, dataset)
    row = catalog.find_version(session, found, catalog.parse_version(version) if version else None)
    graph = lineage.version_graph(session, ctx, row, depth=depth)
    return GraphOut.model_validate(graph.as_dict())


@router.get("/orgs/{org}/jobs/{id}/lineage")
def job_lineage(
    job_id: JobId, caller: JobView, session: SessionDep, depth: Depth = 10
) -> JobLineageOut:
    """The job's record (who, when, code version, parameters, inputs, machine, resources,
    outputs, state) and its graph."""
    job = job_in_org(session, caller, job_id)
    graph = lineage.job_graph(session, caller.ctx, job, depth=depth)
    return JobLineageOut.model_validate(
        {
            **graph.as_dict(),
            "job": lineage.job_record(session, job),
            "rerun": lineage.rerun_spec(session, job),
        }
    )


@router.post("/orgs/{org}/jobs/{id}/lineage")
def record_job_run(
    job_id: JobId, body: RunRecordIn, caller: JobRecordWrite, session: SessionDep
) -> dict[str, Any]:
    """Record how and where the job ran (the job's own token only): code version, image,
    machine, parameters as run, resources used. Write-once. Returns the job's record."""
    job = writable_job(session, caller, job_id)
    if body.image_digest is not None:
        containers.record_digest(session, job, body.image_digest)
    lineage.record_job_run(
        session,
        job.id,
        code=body.code,
        image=body.image,
        machine=body.machine,
        parameters=body.parameters,
        resources_used=body.resources_used,
    )
    lineage.check_record_size(session, job.id)
    session.commit()
    return lineage.job_record(session, job)


@router.post("/orgs/{org}/jobs/{id}/metadata")
def log_job_metadata(
    job_id: JobId, body: MetadataIn, caller: JobRecordWrite, session: SessionDep
) -> MetadataOut:
    """Merge metrics and metadata into the job's record: the flow itself, with its job
    token, while the job runs (the token dies with the job). With `step`: one point per
    value of the job's metric series (`GET /orgs/{org}/jobs/{id}/metrics`)."""
    job = writable_job(session, caller, job_id)
    if body.step is not None or "step" in body.model_fields_set:
        points = job_metrics.record_points(session, job, body.step, body.values)
        session.commit()
        return MetadataOut(
            job_id=job.id, metadata=lineage.job_metadata(session, job), points=points
        )
    merged = lineage.merge_job_metadata(session, job, body.values)
    session.commit()
    return MetadataOut(job_id=job.id, metadata=merged)
