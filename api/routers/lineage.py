"""Lineage: the graph around a dataset version or a job, a job's full record, and the
metadata a flow logs about itself (`flows.runtime.log_metadata`)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Requires, SessionDep
from api.routers.datasets import JobAware, JobId, job_in_org
from datasets import catalog
from datasets.access import Caller
from flows import lineage
from orgs.context import OrgContext
from policies.permissions import Permission

router = APIRouter(tags=["lineage"])

LineageRead = Annotated[OrgContext, Depends(Requires(Permission.datasets_read))]
JobView = Annotated[Caller, Depends(JobAware(Permission.jobs_view_own))]
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


class RunRecordIn(BaseModel):
    """What the machine knows about a run; the fields given replace the stored ones."""

    model_config = ConfigDict(extra="forbid")

    code: dict[str, Any] | None = Field(
        default=None, description="{source, git_commit, git_dirty} or {bundle_sha256}."
    )
    image: str | None = Field(default=None, max_length=512)
    machine: dict[str, Any] | None = Field(default=None, description="{name, hardware, ...}")
    parameters: dict[str, Any] | None = Field(default=None, description="As the flow ran.")
    resources_used: dict[str, Any] | None = Field(
        default=None, description="e.g. {max_rss_mb, cpu_s}."
    )


class MetadataOut(BaseModel):
    job_id: uuid.UUID
    metadata: dict[str, Any]


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
    job_id: JobId, body: RunRecordIn, caller: JobView, session: SessionDep
) -> dict[str, Any]:
    """Record how and where the job ran (the agent, with the job token): code version,
    image, machine, parameters as run, resources used. Returns the job's record."""
    job = job_in_org(session, caller, job_id)
    lineage.record_job_lineage(
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
    job_id: JobId, body: MetadataIn, caller: JobView, session: SessionDep
) -> MetadataOut:
    """Merge metrics and metadata into the job's record: the flow itself (job token),
    the job's owner, or an admin."""
    job = job_in_org(session, caller, job_id)
    merged = lineage.merge_job_metadata(session, job, body.values)
    session.commit()
    return MetadataOut(job_id=job.id, metadata=merged)
