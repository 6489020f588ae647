"""policies.visibility and the team admission rules: pure tables, no I/O."""

from __future__ import annotations

import uuid

import pytest

from policies.access import Scope, Viewer
from policies.admission import AdmissionSnapshot, Hold, JobRequest, Reject, TeamUsage, decide
from policies.limits import DEFAULT_LIMITS
from policies.permissions import Role
from policies.visibility import (
    ProjectFacts,
    Visibility,
    allow_personal,
    can_view_project,
    personal_refusal,
    project_view_scope,
)

ORG, OTHER_ORG = uuid.uuid4(), uuid.uuid4()
ME, SOMEONE = uuid.uuid4(), uuid.uuid4()


def viewer(role: Role | None) -> Viewer:
    return Viewer(user_id=ME, org_id=ORG, role=role)


@pytest.mark.parametrize(
    ("role", "visibility", "creator", "in_team", "sees"),
    [
        # Admins and owners see every project.
        *[(r, v, SOMEONE, False, True) for r in (Role.owner, Role.admin) for v in Visibility],
        (Role.member, Visibility.org, SOMEONE, False, True),
        (Role.member, Visibility.teams, SOMEONE, True, True),
        (Role.member, Visibility.teams, SOMEONE, False, False),
        (Role.member, Visibility.personal, SOMEONE, False, False),
        (Role.member, Visibility.personal, SOMEONE, True, False),  # teams do not open it
        (Role.member, Visibility.personal, ME, False, True),
        (Role.member, Visibility.teams, ME, False, True),  # its creator always sees it
        (Role.member, Visibility.org, None, False, True),  # `default` is nobody's
        (None, Visibility.org, SOMEONE, False, False),
    ],
)
def test_who_sees_a_project(
    role: Role | None, visibility: Visibility, creator: uuid.UUID | None, in_team: bool, sees: bool
) -> None:
    facts = ProjectFacts(ORG, visibility, creator, in_team)
    assert can_view_project(viewer(role), facts) is sees


def test_other_orgs_projects_are_never_visible() -> None:
    facts = ProjectFacts(OTHER_ORG, Visibility.org, ME)
    assert not can_view_project(viewer(Role.owner), facts)


def test_scopes() -> None:
    assert project_view_scope(viewer(Role.owner)) is Scope.ALL
    assert project_view_scope(viewer(Role.admin)) is Scope.ALL
    assert project_view_scope(viewer(Role.member)) is Scope.OWN
    assert project_view_scope(viewer(None)) is Scope.NONE


def test_allow_personal() -> None:
    assert allow_personal({}) and allow_personal({"projects": {}})
    assert not allow_personal({"projects": {"allow_personal": False}})
    off = {"projects": {"allow_personal": False}}
    refused = personal_refusal(viewer(Role.member), off, "create personal projects")
    assert refused is not None and "projects.allow_personal" in refused
    assert personal_refusal(viewer(Role.admin), off, "x") is None
    assert personal_refusal(viewer(Role.member), {}, "x") is None


def snapshot(*teams: TeamUsage, machine_type: str = "cpu") -> AdmissionSnapshot:
    return AdmissionSnapshot(
        role=Role.member,
        limits=DEFAULT_LIMITS,
        request=JobRequest(machine_type=machine_type),
        teams=teams,
    )


def test_team_concurrency_holds_at_the_cap_of_any_team() -> None:
    assert decide(snapshot(TeamUsage("a", 3, None, 2))).kind == "accept"
    held = decide(snapshot(TeamUsage("a", 3, None, 2), TeamUsage("b", 1, None, 1)))
    assert isinstance(held, Hold) and held.rule == "team_concurrency"
    assert "team b: max_concurrent_jobs" in held.reason
    assert decide(snapshot(TeamUsage("a", None, None, 50))).kind == "accept"
    zero = decide(snapshot(TeamUsage("a", 0, None, 0)))
    assert isinstance(zero, Hold)


def test_team_machine_types_reject_a_type_any_team_leaves_out() -> None:
    assert decide(snapshot(TeamUsage("a", None, ("cpu",)))).kind == "accept"
    out = decide(snapshot(TeamUsage("a", None, ("cpu", "gpu")), TeamUsage("b", None, ("gpu",))))
    assert isinstance(out, Reject) and out.rule == "team_machine_types"
    assert out.field == "machine_type" and "'b'" in out.reason
    assert decide(snapshot()).kind == "accept"


def test_team_usage_without_job() -> None:
    assert TeamUsage("a", 2, None, 2).without_job().running == 1
    assert TeamUsage("a", 2, None, 0).without_job().running == 0
