"""Tags on a job after submission, and the job list's tag filter.

The ledger's `jobs.tags` is the truth; the job's Prefect flow run carries the same
tags (besides our `org:`/`user:`/`type:` ones) so the Prefect UI filters alike. The run
is brought in line after the commit, best effort: Prefect being down leaves the run's
tags stale, never the change undone (the answer says whether Prefect was updated).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from flows.deployments import MAX_TAGS, validate_tags
from flows.gateway import PrefectGateway
from flows.jobs import get_job
from flows.models import Job
from orgs import audit
from orgs.context import OrgContext
from policies import access
from policies.access import JobFacts
from policies.errors import DomainError, Invalid

log = logging.getLogger(__name__)

# Tags the control plane sets on every run; a user's tag may not pose as one.
RESERVED_PREFIXES = ("org:", "user:", "type:")


@dataclass(frozen=True, slots=True)
class TagChange:
    job: Job
    added: list[str]
    removed: list[str]
    prefect_synced: bool | None  # None: no run (yet), nothing to sync


def _clean(tags: Sequence[str], field: str) -> list[str]:
    cleaned = validate_tags([t.strip() for t in tags], field_name=field)
    for i, tag in enumerate(cleaned):
        if tag.startswith(RESERVED_PREFIXES):
            raise Invalid(
                f"Tag {tag!r} is reserved: tags starting with {', '.join(RESERVED_PREFIXES)} "
                "are set by Compute Share.",
                field=f"{field}.{i}",
            )
    return cleaned


def change_tags(
    ctx: OrgContext,
    session: Session,
    gateway: PrefectGateway,
    job_id: uuid.UUID,
    *,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
) -> TagChange:
    """Add and remove tags of a job (its submitter, or admins): 404 when the job is not
    visible, 403 for someone else's job without `jobs:tag-all`, 422 for a bad tag, a
    tag both added and removed, or more than `MAX_TAGS` in the end. Audited."""
    job = get_job(ctx, session, job_id)
    facts = JobFacts.of(job)
    access.require(
        access.can_tag_job(ctx.viewer, facts), access.tag_job_permission(ctx.viewer, facts)
    )
    to_add, to_remove = _clean(add, "add"), _clean(remove, "remove")
    both = sorted(set(to_add) & set(to_remove))
    if both:
        raise Invalid(f"Tag {both[0]!r} is both added and removed.", field="remove")
    if not to_add and not to_remove:
        raise Invalid("Nothing to change: give tags to add or to remove.", field="add")
    before = list(job.tags or [])
    after = [t for t in before if t not in to_remove]
    after += [t for t in to_add if t not in after]
    if len(after) > MAX_TAGS:
        raise Invalid(f"A job may have at most {MAX_TAGS} tags.", field="add")
    added = [t for t in after if t not in before]
    removed = [t for t in before if t not in after]
    if not added and not removed:
        session.commit()
        return TagChange(job, [], [], None)
    job.tags = after
    audit.record(
        session,
        org_id=job.org_id,
        actor=ctx.user,
        action="job.tagged",
        target_type="job",
        target_id=job.id,
        before={"tags": before},
        after={"tags": after, "added": added, "removed": removed},
    )
    session.commit()
    synced = sync_run_tags(gateway, job, added, removed)
    return TagChange(job, added, removed, synced)


def sync_run_tags(
    gateway: PrefectGateway, job: Job, added: Sequence[str], removed: Sequence[str]
) -> bool | None:
    """Apply the change to the job's flow run's tags, keeping tags Prefect or we put
    there. None without a run; False when Prefect could not be updated."""
    if job.flow_run_id is None:
        return None
    try:
        run = gateway.read_flow_run(job.flow_run_id)
        tags = [t for t in run.tags if t not in removed]
        tags += [t for t in added if t not in tags]
        if tags != list(run.tags):
            gateway.update_flow_run(job.flow_run_id, tags=tags)
    except DomainError as exc:
        log.warning("tags of run %s not updated in Prefect: %s", job.flow_run_id, exc.detail)
        return False
    return True


__all__ = ["RESERVED_PREFIXES", "TagChange", "change_tags", "sync_run_tags"]
