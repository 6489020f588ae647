"""Lists agree with `policies.access`: for every role, the jobs, machines and datasets a
list returns (filtered in SQL by each entity's one scope -> WHERE helper) are exactly the
rows of the database the predicate lets that viewer see, on both backends.

Rows come from the public API (jobs submitted by everyone, restricted datasets with and
without a grant, machines of several owners) plus the same in another organization.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from datasets import access as dataset_access
from datasets import catalog
from datasets.models import Dataset
from flows import jobs
from flows.models import Job
from orgs import machines
from orgs.context import OrgContext, member_context
from orgs.db import Database
from orgs.models import Machine, User
from policies import access
from policies.access import JobFacts, MachineFacts
from tests.integration.test_jobs_support import FakePrefect, jobs_app
from tests.support import ApiClient, Person, insert_machine

ROLES = ("owner", "admin", "member", "other_member")


@dataclass
class Org:
    api: ApiClient
    slug: str
    people: dict[str, Person]
    other_slug: str


def _deployment(api: ApiClient, slug: str, who: Person) -> None:
    body = {"name": "train", "entrypoint": "flows/library/train.py:train", "machine_type": "cpu"}
    r = api.post(f"/orgs/{slug}/deployments", who, json=body)
    assert r.status_code in (200, 201), r.text


def _fill(api: ApiClient, slug: str, people: dict[str, Person]) -> None:
    """Two jobs and a machine of each person; each person's open and restricted datasets,
    the member's restricted one granted to the other member."""
    _deployment(api, slug, next(iter(people.values())))
    for role, who in people.items():
        for _ in range(2):
            r = api.post(f"/orgs/{slug}/jobs", who, json={"deployment": "train"})
            assert r.status_code == 201, r.text
        insert_machine(api.db, slug, who.id)
        for visibility in ("org", "restricted"):
            members = [people["other_member"].id] if role == "member" else []
            body = {
                "name": f"{role.replace('_', '-')}-{visibility}",
                "visibility": visibility,
                "members": members if visibility == "restricted" else [],
            }
            r = api.post(f"/orgs/{slug}/datasets", who, json=body)
            assert r.status_code == 201, r.text


@pytest.fixture
def org(database: Database) -> Iterator[Org]:
    with jobs_app(database, FakePrefect()) as api:
        people = {role: api.signup() for role in ROLES}
        slug = api.create_org(people["owner"])
        api.add_member(slug, people["owner"], people["admin"], "admin")
        api.add_member(slug, people["owner"], people["member"], "member")
        api.add_member(slug, people["owner"], people["other_member"], "member")
        _fill(api, slug, people)
        # Another organization with rows of its own: never in any list of ours.
        stranger = api.signup()
        other_slug = api.create_org(stranger)
        _fill(api, other_slug, {"owner": stranger, "member": stranger, "other_member": stranger})
        yield Org(api, slug, people, other_slug)


def _ctx(s: Session, org: Org, role: str) -> OrgContext:
    user = s.get(User, uuid.UUID(org.people[role].id))
    assert user is not None
    return member_context(s, org.slug, user)


@pytest.mark.parametrize("role", ROLES)
def test_job_list_is_what_can_view_job_allows(org: Org, role: str) -> None:
    with org.api.db.session() as s:
        ctx = _ctx(s, org, role)
        rows, total = jobs.list_jobs(ctx, s, limit=500)
        listed = {job.id for job, _user, _dep in rows}
        every = s.scalars(select(Job)).all()
        allowed = {j.id for j in every if access.can_view_job(ctx.viewer, JobFacts.of(j))}
    assert listed == allowed and total == len(allowed)
    assert len(allowed) == (8 if role in ("owner", "admin") else 2)


@pytest.mark.parametrize("role", ROLES)
def test_machine_list_is_what_can_view_machine_allows(org: Org, role: str) -> None:
    with org.api.db.session() as s:
        ctx = _ctx(s, org, role)
        views, total = machines.list_machines(s, ctx, limit=500)
        listed = {v.machine.id for v in views}
        every = s.scalars(select(Machine)).all()
        allowed = {m.id for m in every if access.can_view_machine(ctx.viewer, MachineFacts.of(m))}
    assert listed == allowed and total == len(allowed) == 4


@pytest.mark.parametrize("role", ROLES)
def test_dataset_list_is_what_can_read_dataset_allows(org: Org, role: str) -> None:
    with org.api.db.session() as s:
        ctx = _ctx(s, org, role)
        summaries, total = catalog.list_datasets(s, ctx, limit=500, offset=0)
        listed = {d.dataset.name for d in summaries}
        every = s.scalars(select(Dataset)).all()
        allowed = {d.name for d in every if dataset_access.can_read(s, ctx, d)}
    assert listed == allowed and total == len(allowed)
    # 4 open + own restricted; admins all 8; the other member also the granted one.
    want = {"owner": 8, "admin": 8, "member": 5, "other_member": 6}[role]
    assert len(allowed) == want, sorted(allowed)
