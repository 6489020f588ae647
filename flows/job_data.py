"""A job's datasets: the inputs it reads (pinned at submission, resolved again at claim with
the job user's access checked now, linked to the job for lineage), the outputs it
declared, and the job an upload is an output of. The catalog itself (`datasets.catalog`)
knows jobs only by id.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from datasets.access import Caller, JobScope, can_read, dataset_not_found
from datasets.catalog import find_dataset, find_version, parse_input, pinned_entry
from datasets.models import Dataset, DatasetVersion, JobInput
from datasets.names import validate_name
from flows import visibility
from flows.models import Deployment, Job
from orgs.context import OrgContext, member_context
from orgs.models import Organization, User
from policies import access
from policies.access import CredentialRule, JobFacts
from policies.errors import Conflict, Invalid, NotFound

# In `Job.job_metadata`: the dataset names a job declared as its outputs at submission.
OUTPUTS_KEY = "outputs"
MAX_OUTPUTS = 50


def validate_outputs(names: Sequence[str]) -> list[str]:
    """Declared output names: valid dataset names, each once, at most MAX_OUTPUTS."""
    if len(names) > MAX_OUTPUTS:
        raise Invalid(f"A job declares at most {MAX_OUTPUTS} outputs.", field="outputs")
    checked = [validate_name(n, field="outputs") for n in names]
    if len(set(checked)) != len(checked):
        raise Invalid("Each output is declared once.", field="outputs")
    return checked


def declared_outputs(job: Job) -> frozenset[str] | None:
    """The outputs the job declared, or None when it declared none (any may be written)."""
    names = (job.job_metadata or {}).get(OUTPUTS_KEY)
    return frozenset(str(n) for n in names) if names else None


def job_scope(job: Job) -> JobScope:
    """The job as the dataset catalog sees it: its id, pinned inputs, declared outputs."""
    pinned = frozenset(
        str(e["version_id"])
        for e in job.inputs or []
        if isinstance(e, Mapping) and e.get("version_id")
    )
    session = object_session(job)
    deployment = (
        session.get(Deployment, job.deployment_id)
        if session is not None and job.deployment_id is not None
        else None
    )
    project_id = deployment.project_id if deployment is not None else None
    return JobScope(id=job.id, pinned=pinned, outputs=declared_outputs(job), project_id=project_id)


def output_job(session: Session, caller: Caller, job_id: uuid.UUID | None) -> JobScope | None:
    """The job an upload is an output of: always the job token's own job, never one named
    by a member (`policies.access.can_write_lineage`: 404 for a job they cannot see, 403
    for one they can). For `catalog.plan_upload`."""
    if caller.job is not None:
        if job_id is not None and job_id != caller.job.id:
            raise NotFound("No such job for this token.", code="job_not_found")
        return caller.job
    if job_id is None:
        return None
    job = visibility.visible_job(session, caller.viewer, job_id)
    if job is None:
        raise NotFound(f"No job {job_id} in this organization.", code="job_not_found")
    access.require_rule(
        access.can_write_lineage(caller.viewer, JobFacts.of(job)), CredentialRule.lineage_job_only
    )
    return job_scope(job)


def link_job_inputs(session: Session, job: Job) -> None:
    """Record `job.inputs` (pinned) in `job_inputs` for lineage; idempotent; no commit."""
    have = set(session.scalars(select(JobInput.version_id).where(JobInput.job_id == job.id)))
    for entry in job.inputs or []:
        raw = entry.get("version_id") if isinstance(entry, Mapping) else None
        if not raw:
            continue
        version_id = uuid.UUID(str(raw))
        if version_id not in have:
            session.add(JobInput(job_id=job.id, version_id=version_id, name=str(entry["name"])))
            have.add(version_id)


def job_context(session: Session, job: Job) -> OrgContext:
    """The job's user as a member of its org now (404 if they left)."""
    org = session.get(Organization, job.org_id)
    user = session.get(User, job.user_id)
    if org is None or user is None:
        raise NotFound("The job's organization or user no longer exists.", code="job_not_found")
    # The job runs on even where its user now lacks a required two-factor.
    return member_context(session, org.slug, user, as_job=True)


def resolve_inputs(session: Session, job: Job) -> list[dict[str, Any]]:
    """The job's inputs as the machine must fetch them, with the job user's access
    checked again *now*; records them in `job_inputs`. No commit.

    For the claim code (and `GET /orgs/{org}/jobs/{id}/inputs`). Inputs stored unpinned
    (a raw `"NAME[@V]"`) are pinned here and written back to `job.inputs`, so a rerun
    reads the same versions. Raises 404 for a dataset the user may no longer read and
    409 for a version deleted since submission.
    """
    ctx = job_context(session, job)
    resolved: list[dict[str, Any]] = []
    changed = False
    entries: list[Any] = list(job.inputs or [])
    for i, entry in enumerate(entries):
        if isinstance(entry, Mapping) and entry.get("version_id"):
            alias = str(entry.get("name") or entry.get("dataset"))
            row = session.get(DatasetVersion, uuid.UUID(str(entry["version_id"])))
            dataset = session.get(Dataset, row.dataset_id) if row is not None else None
            if row is None or dataset is None:
                raise Conflict(
                    f"Input '{alias}' no longer exists; submit the job again.",
                    code="input_missing",
                )
            if not can_read(session, ctx, dataset):
                raise dataset_not_found(dataset.name)
        else:
            alias, name, number = parse_input(entry)
            dataset = find_dataset(session, ctx, name)
            row = find_version(session, dataset, number)
            entries[i] = pinned_entry(alias, dataset, row)
            changed = True
        if row.tombstoned_at is not None:
            raise Conflict(
                f"Input '{alias}' ({dataset.name}@{row.version}) was deleted after the job "
                "was submitted.",
                code="input_deleted",
            )
        org_slug = ctx.org.slug
        resolved.append(
            {
                **pinned_entry(alias, dataset, row),
                "download_path": f"/orgs/{org_slug}/datasets/{dataset.name}/versions/"
                f"{row.version}/download",
            }
        )
    if changed:
        job.inputs = entries
    link_job_inputs(session, job)
    return resolved
