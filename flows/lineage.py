"""Lineage: what went into a job, what came out of it, and how and where it ran.

The graph has two kinds of nodes, dataset versions and jobs, and two kinds of edges:
`input` (version -> job that read it) and `output` (job -> version it produced). From a
starting node it follows edges backwards (what this came from, recursively) and forwards
(what used it and what that produced), never sideways, so the answer to "where did this
come from, and what depends on it" stays small.

What a caller may not read stays hidden: versions of datasets they cannot read appear as
`hidden` nodes (no name, no checksum) and are not expanded; other members' jobs show who,
what and when, but their parameters and metadata only to admins.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from datasets.access import can_read
from datasets.models import Dataset, DatasetVersion, JobInput, JobLineage
from flows.containers import rerun_fields
from flows.job_data import declared_outputs
from flows.models import Deployment, Job
from orgs.context import OrgContext
from orgs.db import utcnow
from orgs.models import Machine, User
from policies import access
from policies.access import JobFacts
from policies.errors import Conflict, Invalid

MAX_NODES = 500
MAX_DEPTH = 50
MAX_METADATA_BYTES = 64 * 1024


def version_node_id(version_id: uuid.UUID) -> str:
    return f"version:{version_id}"


def job_node_id(job_id: uuid.UUID) -> str:
    return f"job:{job_id}"


# ----------------------------------------------------------------------- recording


def record_job_lineage(
    session: Session,
    job_id: uuid.UUID,
    *,
    code: Mapping[str, Any] | None = None,
    image: str | None = None,
    machine: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    resources_requested: Mapping[str, Any] | None = None,
    resources_used: Mapping[str, Any] | None = None,
) -> JobLineage:
    """Create or update a job's lineage record; the fields given replace the stored ones.
    No commit. For the agent and claim code: code version (`{"git_commit", "git_dirty"}`
    or `{"bundle_sha256"}`), image, machine (`{"id", "name", "hardware"}`), the parameters
    as run, and the resources asked for and used."""
    row = session.get(JobLineage, job_id)
    if row is None:
        row = JobLineage(
            job_id=job_id,
            code={},
            machine={},
            resources_requested={},
            resources_used={},
            job_metadata={},
        )
        session.add(row)
    if code is not None:
        row.code = dict(code)
    if image is not None:
        row.image = image
    if machine is not None:
        row.machine = dict(machine)
    if parameters is not None:
        row.parameters = dict(parameters)
    if resources_requested is not None:
        row.resources_requested = dict(resources_requested)
    if resources_used is not None:
        row.resources_used = dict(resources_used)
    row.updated_at = utcnow()
    return row


def record_job_run(
    session: Session,
    job_id: uuid.UUID,
    *,
    code: Mapping[str, Any] | None = None,
    image: str | None = None,
    machine: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    resources_used: Mapping[str, Any] | None = None,
) -> JobLineage:
    """What the machine reports about a run, each field written once: the same value
    again is a no-op (a retried report), another value 409 `lineage_written`. No commit."""
    reported: dict[str, Any] = {
        "code": code,
        "image": image,
        "machine": machine,
        "parameters": parameters,
        "resources_used": resources_used,
    }
    row = session.get(JobLineage, job_id)
    for name, value in reported.items():
        stored = getattr(row, name) if row is not None else None
        if value is None or not stored or stored == value:
            continue
        raise Conflict(
            f"The job's {name.replace('_', ' ')} is already recorded; a run's lineage is "
            "written once and never changed.",
            code="lineage_written",
        )
    return record_job_lineage(
        session,
        job_id,
        code=code,
        image=image,
        machine=machine,
        parameters=parameters,
        resources_used=resources_used,
    )


def check_record_size(session: Session, job_id: uuid.UUID) -> None:
    """422 when a job's reported record passes 64 KiB of JSON (it is shown in full)."""
    row = session.get(JobLineage, job_id)
    if row is None:
        return
    reported = [row.code, row.machine, row.parameters, row.resources_used]
    if len(json.dumps(reported, default=str)) > MAX_METADATA_BYTES:
        raise Invalid(
            f"A job's run record may hold at most {MAX_METADATA_BYTES // 1024} KiB of JSON.",
            field="body",
        )


def merge_job_metadata(session: Session, job: Job, values: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `values` into the job's logged metadata (`flows.runtime.log_metadata`);
    later keys win. No commit. 422 past 64 KiB of JSON in total."""
    row = record_job_lineage(session, job.id)
    merged = {**(row.job_metadata or {}), **values}
    if len(json.dumps(merged, default=str)) > MAX_METADATA_BYTES:
        raise Invalid(
            f"A job's metadata may hold at most {MAX_METADATA_BYTES // 1024} KiB of JSON.",
            field="values",
        )
    row.job_metadata = merged
    return merged


def job_metadata(session: Session, job: Job) -> dict[str, Any]:
    """What the job logged so far without a step."""
    row = session.get(JobLineage, job.id)
    return dict(row.job_metadata) if row is not None and row.job_metadata else {}


def jobs_using(
    session: Session, version_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[uuid.UUID]]:
    """The jobs that read each of these versions, oldest first (for the catalog's
    `dataset_detail`)."""
    used: dict[uuid.UUID, list[uuid.UUID]] = {}
    if version_ids:
        for version_id, job_id in session.execute(
            select(JobInput.version_id, JobInput.job_id)
            .join(Job, Job.id == JobInput.job_id)
            .where(JobInput.version_id.in_(version_ids))
            .order_by(Job.created_at)
        ):
            used.setdefault(version_id, []).append(job_id)
    return used


# ----------------------------------------------------------------------- the job record


def job_record(session: Session, job: Job) -> dict[str, Any]:
    """Everything recorded about one job run, for lineage and reproduction."""
    user = session.get(User, job.user_id)
    deployment = session.get(Deployment, job.deployment_id) if job.deployment_id else None
    row = session.get(JobLineage, job.id)
    machine: dict[str, Any] = dict(row.machine) if row and row.machine else {}
    if not machine and job.machine_id is not None:
        m = session.get(Machine, job.machine_id)
        if m is not None:
            machine = {
                "id": str(m.id),
                "name": m.name,
                "machine_type": m.machine_type,
                "hardware": m.hardware,
            }
    duration = None
    if job.started_at is not None and job.ended_at is not None:
        duration = (job.ended_at - job.started_at).total_seconds()
    outputs = session.execute(
        select(DatasetVersion, Dataset)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(DatasetVersion.produced_by_job_id == job.id)
        .order_by(DatasetVersion.created_at)
    ).all()
    return {
        "id": str(job.id),
        "user": {"id": str(job.user_id), "name": user.name if user else None},
        "deployment": deployment.name if deployment else None,
        "flow_name": deployment.flow_name if deployment else None,
        "entrypoint": deployment.entrypoint if deployment else None,
        "state": job.state,
        "reason": job.reason or None,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "duration_s": duration,
        "code": job_code(session, job, row) or (dict(row.code) if row and row.code else {}),
        # A container job's {ref, digest}; else what the machine reported (if anything).
        "image": dict(job.image) if job.image else (row.image if row else None),
        "parameters": dict(row.parameters)
        if row and row.parameters is not None
        else dict(job.parameters or {}),
        "inputs": list(job.inputs or []),
        "machine_type": job.machine_type,
        "machine": machine,
        "resources": {
            "requested": {"memory_mb": job.memory_mb, "max_runtime_s": job.max_runtime_s},
            "used": dict(row.resources_used) if row and row.resources_used else {},
        },
        "outputs": [
            {"dataset": d.name, "version": v.version, "sha256": v.sha256, "size": v.size}
            for v, d in outputs
        ],
        "tags": list(job.tags or []),
        "metadata": dict(row.job_metadata) if row and row.job_metadata else {},
    }


# What the machine reports about fetching a bundle (agents.code_cache) and the Python
# environment its requirements ran in (agents.pyenv), shown with it.
CODE_FETCH_KEYS: Final[tuple[str, ...]] = ("fetch_ms", "cached", "requirements_digest")


def job_code(session: Session, job: Job, row: JobLineage | None = None) -> dict[str, Any] | None:
    """The code the job runs (`jobs.code`, set at submission), with how its machine
    fetched it (`fetch_ms`, `cached`) and the requirements environment it ran in
    (`requirements_digest`) once reported; None when the job ran the machines' own
    copy."""
    if not job.code:
        return None
    row = row if row is not None else session.get(JobLineage, job.id)
    reported = dict(row.code or {}) if row is not None else {}
    fetch: dict[str, Any] = {k: reported[k] for k in CODE_FETCH_KEYS if k in reported}
    return {**dict(job.code), **fetch}


def rerun_spec(session: Session, job: Job) -> dict[str, Any]:
    """A `POST /orgs/{org}/jobs` body that runs `job` again: same deployment,
    parameters, machine type, resources and pinned input versions. `code` is the code
    version the job ran, for the caller to compare with what the deployment runs now."""
    deployment = session.get(Deployment, job.deployment_id) if job.deployment_id else None
    row = session.get(JobLineage, job.id)
    inputs = [
        {"dataset": e["dataset"], "version": e["version"], "name": e.get("name", e["dataset"])}
        for e in (job.inputs or [])
        if isinstance(e, Mapping) and e.get("dataset") and e.get("version")
    ]
    container = rerun_fields(job)
    if container is not None:
        # A command job runs again in the very image it pulled (by digest).
        return {
            "deployment": "",
            "parameters": {},
            **container,
            "machine_type": job.machine_type,
            "resources": {"memory_mb": job.memory_mb, "max_runtime_s": job.max_runtime_s},
            "inputs": inputs,
            "outputs": sorted(declared_outputs(job) or ()),
            "tags": list(job.tags or []),
            "code": {},
        }
    return {
        "deployment": deployment.name if deployment else None,
        "parameters": dict(row.parameters)
        if row and row.parameters is not None
        else dict(job.parameters or {}),
        "machine_type": job.machine_type,
        "resources": {"memory_mb": job.memory_mb, "max_runtime_s": job.max_runtime_s},
        "inputs": inputs,
        "outputs": sorted(declared_outputs(job) or ()),
        "tags": list(job.tags or []),
        "code": dict(job.code) if job.code else (dict(row.code) if row and row.code else {}),
    }


# ----------------------------------------------------------------------- the graph


@dataclass
class Graph:
    root: str
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: set[tuple[str, str, str]] = field(default_factory=set)
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "nodes": list(self.nodes.values()),
            "edges": [{"source": s, "target": t, "kind": k} for s, t, k in sorted(self.edges)],
            "truncated": self.truncated,
        }


class _Walker:
    """Breadth-first over the lineage graph, one query per level and direction."""

    def __init__(self, session: Session, ctx: OrgContext, max_nodes: int) -> None:
        self.session = session
        self.ctx = ctx
        self.max_nodes = max_nodes
        self.versions: dict[uuid.UUID, tuple[DatasetVersion, Dataset]] = {}
        self.jobs: dict[uuid.UUID, Job] = {}
        self.hidden: set[uuid.UUID] = set()

    # -- loading
    def load_versions(self, ids: Sequence[uuid.UUID]) -> None:
        wanted = [i for i in ids if i not in self.versions]
        if not wanted:
            return
        for v, d in self.session.execute(
            select(DatasetVersion, Dataset)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .where(DatasetVersion.id.in_(wanted), Dataset.org_id == self.ctx.org.id)
        ):
            self.versions[v.id] = (v, d)
            if not can_read(self.session, self.ctx, d):
                self.hidden.add(v.id)

    def load_jobs(self, ids: Sequence[uuid.UUID]) -> None:
        wanted = [i for i in ids if i not in self.jobs]
        if wanted:
            for job in self.session.scalars(
                select(Job).where(Job.id.in_(wanted), Job.org_id == self.ctx.org.id)
            ):
                self.jobs[job.id] = job

    # -- neighbours: (node id, edge)
    def expand(
        self, frontier: list[str], *, upstream: bool
    ) -> list[tuple[str, tuple[str, str, str]]]:
        version_ids = [uuid.UUID(n.split(":", 1)[1]) for n in frontier if n.startswith("version:")]
        job_ids = [uuid.UUID(n.split(":", 1)[1]) for n in frontier if n.startswith("job:")]
        version_ids = [v for v in version_ids if v not in self.hidden]
        found: list[tuple[str, tuple[str, str, str]]] = []
        s = self.session
        if upstream:
            # version <- its producing job; job <- its input versions
            if version_ids:
                for vid, jid in s.execute(
                    select(DatasetVersion.id, DatasetVersion.produced_by_job_id).where(
                        DatasetVersion.id.in_(version_ids),
                        DatasetVersion.produced_by_job_id.is_not(None),
                    )
                ):
                    assert jid is not None
                    found.append(
                        (job_node_id(jid), (job_node_id(jid), version_node_id(vid), "output"))
                    )
            if job_ids:
                for jid, vid in s.execute(
                    select(JobInput.job_id, JobInput.version_id).where(JobInput.job_id.in_(job_ids))
                ):
                    found.append(
                        (version_node_id(vid), (version_node_id(vid), job_node_id(jid), "input"))
                    )
        else:
            # version -> jobs that read it; job -> versions it produced
            if version_ids:
                for vid, jid in s.execute(
                    select(JobInput.version_id, JobInput.job_id).where(
                        JobInput.version_id.in_(version_ids)
                    )
                ):
                    found.append(
                        (job_node_id(jid), (version_node_id(vid), job_node_id(jid), "input"))
                    )
            if job_ids:
                for jid, vid in s.execute(
                    select(DatasetVersion.produced_by_job_id, DatasetVersion.id).where(
                        DatasetVersion.produced_by_job_id.in_(job_ids)
                    )
                ):
                    assert jid is not None
                    found.append(
                        (version_node_id(vid), (job_node_id(jid), version_node_id(vid), "output"))
                    )
        return found

    def edges_between(
        self, version_ids: Sequence[uuid.UUID], job_ids: Sequence[uuid.UUID]
    ) -> set[tuple[str, str, str]]:
        if not version_ids or not job_ids:
            return set()
        found = {
            (version_node_id(vid), job_node_id(jid), "input")
            for jid, vid in self.session.execute(
                select(JobInput.job_id, JobInput.version_id).where(
                    JobInput.job_id.in_(job_ids), JobInput.version_id.in_(version_ids)
                )
            )
        }
        for vid, jid in self.session.execute(
            select(DatasetVersion.id, DatasetVersion.produced_by_job_id).where(
                DatasetVersion.id.in_(version_ids), DatasetVersion.produced_by_job_id.in_(job_ids)
            )
        ):
            assert jid is not None
            found.add((job_node_id(jid), version_node_id(vid), "output"))
        return found

    # -- nodes
    def version_node(self, version_id: uuid.UUID) -> dict[str, Any] | None:
        loaded = self.versions.get(version_id)
        if loaded is None:
            return None
        v, d = loaded
        if version_id in self.hidden:
            return {"id": version_node_id(v.id), "type": "dataset_version", "hidden": True}
        return {
            "id": version_node_id(v.id),
            "type": "dataset_version",
            "hidden": False,
            "dataset": d.name,
            "version": v.version,
            "kind": v.kind,
            "sha256": v.sha256,
            "size": v.size,
            "created_at": v.created_at.isoformat(),
            "tombstoned": v.tombstoned_at is not None,
            "produced_by_job_id": str(v.produced_by_job_id) if v.produced_by_job_id else None,
        }

    def job_node(self, job_id: uuid.UUID) -> dict[str, Any] | None:
        job = self.jobs.get(job_id)
        if job is None:
            return None
        user = self.session.get(User, job.user_id)
        deployment = self.session.get(Deployment, job.deployment_id) if job.deployment_id else None
        node: dict[str, Any] = {
            "id": job_node_id(job.id),
            "type": "job",
            "job_id": str(job.id),
            "deployment": deployment.name if deployment else None,
            "user": user.name if user else None,
            "state": job.state,
            "created_at": job.created_at.isoformat(),
            "ended_at": job.ended_at.isoformat() if job.ended_at else None,
        }
        # Everyone reading the graph sees that a job used the data; its details only
        # those who may see the job itself.
        if access.can_view_job(self.ctx.viewer, JobFacts.of(job)):
            node["parameters"] = dict(job.parameters or {})
            row = self.session.get(JobLineage, job.id)
            if row is not None:
                node["code"] = dict(row.code or {})
                node["machine"] = (row.machine or {}).get("name")
            code = job_code(self.session, job, row)
            if code is not None:
                node["code"] = code
        return node


def _walk(session: Session, ctx: OrgContext, root: str, *, depth: int, max_nodes: int) -> Graph:
    depth = max(0, min(depth, MAX_DEPTH))
    walker = _Walker(session, ctx, max_nodes)
    graph = Graph(root=root)
    seen = {root}
    for upstream in (True, False):
        frontier = [root]
        for _ in range(depth):
            if not frontier:
                break
            step = walker.expand(frontier, upstream=upstream)
            frontier = []
            for node, edge in step:
                if node not in seen:
                    if len(seen) >= max_nodes:
                        graph.truncated = True
                        continue
                    seen.add(node)
                    frontier.append(node)
                graph.edges.add(edge)
    version_ids = [uuid.UUID(n[8:]) for n in seen if n.startswith("version:")]
    job_ids = [uuid.UUID(n[4:]) for n in seen if n.startswith("job:")]
    walker.load_versions(version_ids)
    walker.load_jobs(job_ids)
    # Every edge between the nodes found, not only those walked: job 2 reading raw@1 is
    # shown even when raw@1 was reached upstream and job 2 downstream.
    graph.edges |= walker.edges_between(version_ids, job_ids)
    for node_id in sorted(seen, key=lambda n: (n != root, n)):
        kind, raw = node_id.split(":", 1)
        data = (
            walker.version_node(uuid.UUID(raw))
            if kind == "version"
            else walker.job_node(uuid.UUID(raw))
        )
        if data is not None:
            graph.nodes[node_id] = data
    # Edges only between nodes that made it in (another org's rows never do).
    graph.edges = {e for e in graph.edges if e[0] in graph.nodes and e[1] in graph.nodes}
    return graph


def version_graph(
    session: Session,
    ctx: OrgContext,
    version: DatasetVersion,
    *,
    depth: int = 10,
    max_nodes: int = MAX_NODES,
) -> Graph:
    """Where `version` came from and what used it, `depth` hops each way."""
    return _walk(session, ctx, version_node_id(version.id), depth=depth, max_nodes=max_nodes)


def job_graph(
    session: Session, ctx: OrgContext, job: Job, *, depth: int = 10, max_nodes: int = MAX_NODES
) -> Graph:
    """The job's inputs (and where they came from) and outputs (and what used them)."""
    return _walk(session, ctx, job_node_id(job.id), depth=depth, max_nodes=max_nodes)


__all__ = [
    "Graph",
    "job_graph",
    "job_metadata",
    "job_record",
    "jobs_using",
    "merge_job_metadata",
    "record_job_lineage",
    "record_job_run",
    "rerun_spec",
    "version_graph",
]
