"""The audit page's targets as names with links instead of UUIDs.

One query per target type on the page (at most a page of ids each), always within the
organization, so an id never resolves to another organization's object. A target that
no longer exists keeps its id (shortened), without a link.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from datasets.models import Dataset
from flows.models import Deployment, Job, Project
from orgs.models import AuditEvent, Machine, Organization, User


@dataclass(frozen=True)
class Target:
    label: str
    href: str | None = None


def _uuids(ids: Sequence[str]) -> list[uuid.UUID]:
    out = []
    for raw in ids:
        try:
            out.append(uuid.UUID(raw))
        except ValueError:
            continue
    return out


def _jobs(s: Session, org: Organization, ids: list[uuid.UUID]) -> dict[str, Target]:
    rows = s.execute(
        select(Job.id, Deployment.name)
        .outerjoin(Deployment, Deployment.id == Job.deployment_id)
        .where(Job.org_id == org.id, Job.id.in_(ids))
    ).all()
    return {
        str(i): Target(f"job {str(i)[:8]}" + (f" ({d})" if d else ""), f"/jobs/{i}")
        for i, d in rows
    }


def _machines(s: Session, org: Organization, ids: list[uuid.UUID]) -> dict[str, Target]:
    rows = s.execute(
        select(Machine.id, Machine.name).where(Machine.org_id == org.id, Machine.id.in_(ids))
    ).all()
    return {str(i): Target(f"machine {n}", "/machines") for i, n in rows}


def _datasets(s: Session, org: Organization, ids: list[uuid.UUID]) -> dict[str, Target]:
    rows = s.execute(
        select(Dataset.id, Dataset.name, Dataset.deleted_at).where(
            Dataset.org_id == org.id, Dataset.id.in_(ids)
        )
    ).all()
    return {
        str(i): Target(f"dataset {n}", None if gone else f"/datasets/{n}") for i, n, gone in rows
    }


def _deployments(s: Session, org: Organization, ids: list[uuid.UUID]) -> dict[str, Target]:
    rows = s.execute(
        select(Deployment.id, Deployment.name).where(
            Deployment.org_id == org.id, Deployment.id.in_(ids)
        )
    ).all()
    return {str(i): Target(f"deployment {n}", f"/jobs?deployment={n}") for i, n in rows}


def _projects(s: Session, org: Organization, ids: list[uuid.UUID]) -> dict[str, Target]:
    rows = s.execute(
        select(Project.id, Project.name).where(Project.org_id == org.id, Project.id.in_(ids))
    ).all()
    return {str(i): Target(f"project {n}", f"/projects/{n}") for i, n in rows}


def _users(s: Session, org: Organization, ids: list[uuid.UUID]) -> dict[str, Target]:
    # Names only (as the actor column shows them); ids come from this org's own log.
    rows = s.execute(select(User.id, User.name).where(User.id.in_(ids))).all()
    return {str(i): Target(f"user {n}", "/members") for i, n in rows}


_RESOLVERS: dict[str, Callable[[Session, Organization, list[uuid.UUID]], dict[str, Target]]] = {
    "job": _jobs,
    "machine": _machines,
    "dataset": _datasets,
    "deployment": _deployments,
    "project": _projects,
    "user": _users,
}


def resolve(session: Session, org: Organization, rows: Sequence[AuditEvent]) -> dict[int, Target]:
    """Each row's target (by row id); hrefs are relative to the org's pages."""
    by_type: dict[str, set[str]] = {}
    for row in rows:
        if row.target_id:
            by_type.setdefault(row.target_type, set()).add(row.target_id)
    found: dict[tuple[str, str], Target] = {}
    for kind, ids in by_type.items():
        resolver = _RESOLVERS.get(kind)
        if resolver is not None and (uuids := _uuids(sorted(ids))):
            for key, target in resolver(session, org, uuids).items():
                found[(kind, key)] = target
    out: dict[int, Target] = {}
    for row in rows:
        out[row.id] = found.get((row.target_type, row.target_id)) or _fallback(org, row)
    return out


def _fallback(org: Organization, row: Any) -> Target:
    kind, ident = row.target_type or "", row.target_id or ""
    if kind == "organization" and ident == str(org.id):
        return Target(f"organization {org.name}", "")
    if kind == "secret":  # secrets are audited by name
        return Target(f"secret {ident}", "/secrets")
    short = ident[:8] if len(ident) == 36 else ident
    return Target(f"{kind} {short}".strip())
