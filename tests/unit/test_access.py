"""policies.access as tables: every role (and a non-member) x every kind of ownership.

The expected answers are written out by hand, not derived from the permission table,
so a change to either the table or the predicates shows up here as a changed row.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping

import pytest

from policies import access
from policies.access import DatasetFacts, JobFacts, MachineFacts, Scope, Viewer
from policies.errors import Forbidden
from policies.permissions import Permission, Role, denial

ORG = uuid.uuid4()
OTHER_ORG = uuid.uuid4()
ME = uuid.uuid4()
SOMEONE = uuid.uuid4()

# Column order of every row: owner, admin, member, non-member.
WHO: tuple[Role | None, ...] = (Role.owner, Role.admin, Role.member, None)
T, F = True, False


def viewer(role: Role | None, *, job_id: uuid.UUID | None = None) -> Viewer:
    return Viewer(user_id=ME, org_id=ORG, role=role, job_id=job_id)


def job(owner: uuid.UUID = ME, org: uuid.UUID = ORG) -> JobFacts:
    return JobFacts(id=uuid.uuid4(), org_id=org, user_id=owner)


def machine(owner: uuid.UUID = ME, org: uuid.UUID = ORG) -> MachineFacts:
    return MachineFacts(org_id=org, owner_id=owner)


def dataset(
    creator: uuid.UUID | None = ME,
    *,
    open_: bool = False,
    granted: bool = False,
    org: uuid.UUID = ORG,
) -> DatasetFacts:
    return DatasetFacts(org_id=org, created_by=creator, open_to_org=open_, granted=granted)


JOBS: Mapping[str, JobFacts] = {
    "own": job(),
    "someone else's": job(SOMEONE),
    "own, other org": job(org=OTHER_ORG),
    "someone else's, other org": job(SOMEONE, OTHER_ORG),
}
MACHINES: Mapping[str, MachineFacts] = {
    "own": machine(),
    "someone else's": machine(SOMEONE),
    "own, other org": machine(org=OTHER_ORG),
    "someone else's, other org": machine(SOMEONE, OTHER_ORG),
}
DATASETS: Mapping[str, DatasetFacts] = {
    "own, restricted": dataset(),
    "own, open": dataset(open_=True),
    "someone else's, open": dataset(SOMEONE, open_=True),
    "someone else's, restricted, granted": dataset(SOMEONE, granted=True),
    "someone else's, restricted": dataset(SOMEONE),
    "creator gone, open": dataset(None, open_=True),
    "creator gone, restricted": dataset(None),
    "someone else's, open, other org": dataset(SOMEONE, open_=True, org=OTHER_ORG),
    "own, other org": dataset(org=OTHER_ORG),
}

Table = Mapping[str, tuple[bool, ...]]

CAN_VIEW_JOB: Table = {
    "own": (T, T, T, F),
    "someone else's": (T, T, F, F),
    "own, other org": (F, F, F, F),
    "someone else's, other org": (F, F, F, F),
}
CAN_CANCEL_JOB: Table = {
    "own": (T, T, T, F),
    "someone else's": (T, T, F, F),
    "own, other org": (F, F, F, F),
    "someone else's, other org": (F, F, F, F),
}
# Outputs, metadata, run record: a member's token never writes lineage, not even the
# job's own user or the owner (only the job's token does, see the job token tests).
CAN_WRITE_LINEAGE: Table = {
    "own": (F, F, F, F),
    "someone else's": (F, F, F, F),
    "own, other org": (F, F, F, F),
    "someone else's, other org": (F, F, F, F),
}
CAN_VIEW_MACHINE: Table = {
    "own": (T, T, T, F),
    "someone else's": (T, T, T, F),
    "own, other org": (F, F, F, F),
    "someone else's, other org": (F, F, F, F),
}
CAN_MANAGE_MACHINE: Table = {
    "own": (T, T, T, F),
    "someone else's": (T, T, F, F),
    "own, other org": (F, F, F, F),
    "someone else's, other org": (F, F, F, F),
}
CAN_READ_DATASET: Table = {
    "own, restricted": (T, T, T, F),
    "own, open": (T, T, T, F),
    "someone else's, open": (T, T, T, F),
    "someone else's, restricted, granted": (T, T, T, F),
    "someone else's, restricted": (T, T, F, F),
    "creator gone, open": (T, T, T, F),
    "creator gone, restricted": (T, T, F, F),
    "someone else's, open, other org": (F, F, F, F),
    "own, other org": (F, F, F, F),
}
CAN_WRITE_DATASET: Table = {
    "own, restricted": (T, T, T, F),
    "own, open": (T, T, T, F),
    "someone else's, open": (T, T, F, F),
    "someone else's, restricted, granted": (T, T, F, F),  # a grant is read access only
    "someone else's, restricted": (T, T, F, F),
    "creator gone, open": (T, T, F, F),
    "creator gone, restricted": (T, T, F, F),
    "someone else's, open, other org": (F, F, F, F),
    "own, other org": (F, F, F, F),
}

SCOPES: Mapping[str, tuple[Callable[[Viewer], Scope], tuple[Scope, ...]]] = {
    "jobs": (access.job_view_scope, (Scope.ALL, Scope.ALL, Scope.OWN, Scope.NONE)),
    "machines": (access.machine_view_scope, (Scope.ALL, Scope.ALL, Scope.ALL, Scope.NONE)),
    "datasets": (access.dataset_read_scope, (Scope.ALL, Scope.ALL, Scope.OWN, Scope.NONE)),
}

PREDICATES: list[tuple[str, Callable[[Viewer, object], bool], Mapping[str, object], Table]] = [
    ("can_view_job", access.can_view_job, JOBS, CAN_VIEW_JOB),  # type: ignore[list-item]
    ("can_cancel_job", access.can_cancel_job, JOBS, CAN_CANCEL_JOB),  # type: ignore[list-item]
    ("can_write_lineage", access.can_write_lineage, JOBS, CAN_WRITE_LINEAGE),  # type: ignore[list-item]
    ("can_view_machine", access.can_view_machine, MACHINES, CAN_VIEW_MACHINE),  # type: ignore[list-item]
    ("can_manage_machine", access.can_manage_machine, MACHINES, CAN_MANAGE_MACHINE),  # type: ignore[list-item]
    ("can_read_dataset", access.can_read_dataset, DATASETS, CAN_READ_DATASET),  # type: ignore[list-item]
    ("can_write_dataset", access.can_write_dataset, DATASETS, CAN_WRITE_DATASET),  # type: ignore[list-item]
]

CASES = [
    pytest.param(fn, facts[case], role, want, id=f"{name}: {case} as {role or 'non-member'}")
    for name, fn, facts, table in PREDICATES
    for case, row in table.items()
    for role, want in zip(WHO, row, strict=True)
]


def test_every_table_covers_every_role_and_every_case() -> None:
    assert set(WHO) - {None} == set(Role), "a new role needs a column in every table"
    for name, _fn, facts, table in PREDICATES:
        assert set(table) == set(facts), f"{name}: a fact without a row, or a row without one"


@pytest.mark.parametrize(("fn", "facts", "role", "want"), CASES)
def test_predicate(
    fn: Callable[[Viewer, object], bool], facts: object, role: Role | None, want: bool
) -> None:
    assert fn(viewer(role), facts) is want


@pytest.mark.parametrize("entity", sorted(SCOPES))
def test_list_scopes(entity: str) -> None:
    fn, row = SCOPES[entity]
    assert [fn(viewer(role)) for role in WHO] == list(row)


@pytest.mark.parametrize("role", WHO, ids=lambda r: str(r or "non-member"))
def test_scopes_agree_with_the_predicates(role: Role | None) -> None:
    """A list (SQL, from the scope) never shows a row the predicate hides, nor hides one
    it shows: ALL = every row of the org, OWN = the viewer's, NONE = nothing."""
    v = viewer(role)

    def by_scope(scope: Scope, owner: uuid.UUID | None) -> bool:
        return scope is Scope.ALL or (scope is Scope.OWN and owner == ME)

    for facts in JOBS.values():
        in_org = facts.org_id == ORG
        expected = in_org and by_scope(access.job_view_scope(v), facts.user_id)
        assert access.can_view_job(v, facts) is expected
    for m in MACHINES.values():
        expected = m.org_id == ORG and by_scope(access.machine_view_scope(v), m.owner_id)
        assert access.can_view_machine(v, m) is expected
    for d in DATASETS.values():
        scope = access.dataset_read_scope(v)
        # OWN for datasets: open to the org, created by the viewer, or granted to them.
        mine = d.open_to_org or d.granted or d.created_by == ME
        expected = d.org_id == ORG and (scope is Scope.ALL or (scope is Scope.OWN and mine))
        assert access.can_read_dataset(v, d) is expected


@pytest.mark.parametrize("role", [Role.owner, Role.admin, Role.member])
def test_a_job_token_sees_its_own_job_and_no_other(role: Role) -> None:
    mine, other_of_mine, theirs = job(), job(), job(SOMEONE)
    v = viewer(role, job_id=mine.id)
    assert access.can_view_job(v, mine)
    assert not access.can_view_job(v, other_of_mine)
    assert not access.can_view_job(v, theirs)  # even when the user is an admin
    assert access.job_view_scope(v) is Scope.NONE  # a token lists nothing
    assert access.can_write_lineage(v, mine)
    assert not access.can_write_lineage(v, other_of_mine)
    assert not access.can_write_lineage(v, theirs)
    foreign = JobFacts(id=mine.id, org_id=OTHER_ORG, user_id=ME)
    assert not access.can_view_job(v, foreign)


def test_the_permission_named_in_a_403_is_own_or_all() -> None:
    v = viewer(Role.member)
    assert access.cancel_job_permission(v, job()) is Permission.jobs_cancel_own
    assert access.cancel_job_permission(v, job(SOMEONE)) is Permission.jobs_cancel_all
    assert access.manage_machine_permission(v, machine()) is Permission.machines_manage_own
    assert access.manage_machine_permission(v, machine(SOMEONE)) is Permission.machines_manage_all
    assert access.write_dataset_permission(v, dataset()) is Permission.datasets_create
    assert access.write_dataset_permission(v, dataset(SOMEONE)) is Permission.datasets_manage_all


def test_require_raises_the_policy_sentence() -> None:
    access.require(True, Permission.jobs_cancel_all)
    with pytest.raises(Forbidden) as raised:
        access.require(False, Permission.jobs_cancel_all)
    assert raised.value.detail == denial(Permission.jobs_cancel_all)
    assert raised.value.code == "forbidden"


# ----------------------------------------------------------------- job credentials

JOB = uuid.uuid4()  # the job the token is for
INPUT = uuid.uuid4()
NOT_INPUT = uuid.uuid4()
DECLARED = frozenset({"model", "report"})

# (case) -> (as a member's token, as the job's token); the user's role and the
# dataset's access are decided before these, by the tables above.
JOB_TOKEN_CASES: Mapping[str, tuple[Callable[[Viewer], bool], tuple[bool, bool]]] = {
    "read a pinned input version": (
        lambda v: access.can_read_input_version(v, INPUT, frozenset({INPUT})),
        (T, T),
    ),
    "read another version of a readable dataset": (
        lambda v: access.can_read_input_version(v, NOT_INPUT, frozenset({INPUT})),
        (T, F),
    ),
    "read a version, job pinned nothing": (
        lambda v: access.can_read_input_version(v, INPUT, frozenset()),
        (T, F),
    ),
    "write a declared output": (lambda v: access.can_write_output(v, "model", DECLARED), (T, T)),
    "write an undeclared dataset": (
        lambda v: access.can_write_output(v, "other", DECLARED),
        (T, F),
    ),
    "write any dataset, job declared none": (
        lambda v: access.can_write_output(v, "other", None),
        (T, T),
    ),
    "write its own job's lineage": (
        lambda v: access.can_write_lineage(v, JobFacts(JOB, ORG, ME)),
        (F, T),
    ),
    "write another job's lineage (same user)": (
        lambda v: access.can_write_lineage(v, JobFacts(uuid.uuid4(), ORG, ME)),
        (F, F),
    ),
    "write its job's lineage in another org": (
        lambda v: access.can_write_lineage(v, JobFacts(JOB, OTHER_ORG, ME)),
        (F, F),
    ),
}


@pytest.mark.parametrize("role", [Role.owner, Role.admin, Role.member])
@pytest.mark.parametrize("case", sorted(JOB_TOKEN_CASES))
def test_a_job_token_is_scoped_to_its_job(case: str, role: Role) -> None:
    predicate, (as_member, as_job) = JOB_TOKEN_CASES[case]
    assert predicate(viewer(role)) is as_member
    assert predicate(viewer(role, job_id=JOB)) is as_job


def test_a_route_takes_a_job_token_only_when_it_says_what_for() -> None:
    assert not access.job_token_allows(None)  # the default: refused
    assert all(access.job_token_allows(use) for use in access.JobTokenUse)


def test_credential_refusals_name_their_rule() -> None:
    for rule in access.CredentialRule:
        access.require_rule(True, rule)
        with pytest.raises(Forbidden) as raised:
            access.require_rule(False, rule)
        assert raised.value.code == rule.value
        assert raised.value.detail == access.rule_denial(rule) and raised.value.detail


def test_facts_are_frozen() -> None:
    facts = job()
    with pytest.raises(AttributeError):
        facts.user_id = SOMEONE  # type: ignore[misc]
