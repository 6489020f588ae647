"""Admission rules: each rule alone, their order, defaults, release/claim, and properties."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import policies.admission as admission
from policies.admission import (
    HOLD_RULES,
    POLICY,
    REJECT_RULES,
    RULE_NAMES,
    Accept,
    AdmissionSnapshot,
    Hold,
    JobRequest,
    OrgUsage,
    Reject,
    Resources,
    RuleOutcome,
    UserUsage,
    decide,
    effective_resources,
    explain,
)
from policies.limits import Limits, LimitsDocument, MachineTypeLimits, OrganizationLimits
from policies.permissions import Role

# Small numbers so every boundary is easy to read in the tables.
LIMITS = LimitsDocument(
    organization=OrganizationLimits(
        limits=Limits(
            max_concurrent_jobs_per_user=2,
            max_queued_jobs_per_user=3,
            max_job_runtime=3600,
            max_job_memory=1024,
        ),
        machine_types={
            "cpu": MachineTypeLimits(max_scale=10, per_user_quota=5),
            "gpu": MachineTypeLimits(max_scale=4, per_user_quota=1),
        },
    )
)
RULES = {rule.name: rule for rule in POLICY}


def snap(
    *,
    role: Role | None = Role.member,
    machine_type: str = "cpu",
    memory_mb: int | None = None,
    max_runtime_s: int | None = None,
    deployment_known: bool = True,
    inputs_readable: bool = True,
    running: int = 0,
    queued: int = 0,
    user_by_type: dict[str, int] | None = None,
    org_by_type: dict[str, int] | None = None,
    for_release: bool = False,
    limits: LimitsDocument = LIMITS,
    deployment_limit: int | None = None,
    collision_strategy: Any = "enqueue",
    deployment_running: int = 0,
) -> AdmissionSnapshot:
    return AdmissionSnapshot(
        role=role,
        limits=limits,
        request=JobRequest(
            machine_type=machine_type,
            memory_mb=memory_mb,
            max_runtime_s=max_runtime_s,
            deployment_known=deployment_known,
            inputs_readable=inputs_readable,
            deployment_limit=deployment_limit,
            collision_strategy=collision_strategy,
        ),
        user=UserUsage(running=running, queued=queued, running_by_type=user_by_type or {}),
        org=OrgUsage(running_by_type=org_by_type or {}),
        for_release=for_release,
        deployment_running=deployment_running,
    )


def test_rule_names_and_order_are_stable() -> None:
    assert RULE_NAMES == (
        "role_may_submit",
        "known_deployment",
        "dataset_access",
        "known_machine_type",
        "team_machine_types",
        "runtime_within_limit",
        "memory_within_limit",
        "queue_within_limit",
        "deployment_busy",
        "user_concurrency",
        "team_concurrency",
        "type_quota",
        "type_scale",
        "deployment_concurrency",
    )
    assert POLICY == REJECT_RULES + HOLD_RULES
    assert all(rule.effect == "reject" for rule in REJECT_RULES)
    assert all(rule.effect == "hold" for rule in HOLD_RULES)


# --------------------------------------------------------------- each rule alone
# (rule, snapshot overrides, expected status, words in the reason, expected field)

RULE_CASES: list[Any] = [
    # role_may_submit
    pytest.param("role_may_submit", {"role": Role.member}, "pass", [], None, id="role-member"),
    pytest.param("role_may_submit", {"role": Role.admin}, "pass", [], None, id="role-admin"),
    pytest.param("role_may_submit", {"role": Role.owner}, "pass", [], None, id="role-owner"),
    pytest.param(
        "role_may_submit", {"role": None}, "fail", ["not a member"], None, id="role-non-member"
    ),
    # known_deployment
    pytest.param("known_deployment", {}, "pass", [], None, id="deployment-known"),
    pytest.param(
        "known_deployment",
        {"deployment_known": False},
        "fail",
        ["deployment does not exist"],
        "deployment",
        id="deployment-unknown",
    ),
    # dataset_access
    pytest.param("dataset_access", {}, "pass", [], None, id="inputs-readable"),
    pytest.param(
        "dataset_access",
        {"inputs_readable": False},
        "fail",
        ["input datasets"],
        "inputs",
        id="inputs-not-readable",
    ),
    # known_machine_type
    pytest.param("known_machine_type", {"machine_type": "gpu"}, "pass", [], None, id="type-gpu"),
    pytest.param("known_machine_type", {"machine_type": "cpu"}, "pass", [], None, id="type-cpu"),
    pytest.param(
        "known_machine_type",
        {"machine_type": "tpu"},
        "fail",
        ["'tpu' is not offered", "known: cpu, gpu"],
        "machine_type",
        id="type-unknown",
    ),
    pytest.param(
        "known_machine_type",
        {"machine_type": "GPU"},
        "fail",
        ["'GPU'"],
        "machine_type",
        id="type-case-sensitive",
    ),
    # runtime_within_limit
    pytest.param(
        "runtime_within_limit", {}, "pass", ["maximum of 3600 s"], None, id="runtime-default"
    ),
    pytest.param("runtime_within_limit", {"max_runtime_s": 1}, "pass", [], None, id="runtime-1"),
    pytest.param(
        "runtime_within_limit", {"max_runtime_s": 3600}, "pass", [], None, id="runtime-at-max"
    ),
    pytest.param(
        "runtime_within_limit",
        {"max_runtime_s": 3601},
        "fail",
        ["3601 s exceeds", "maximum of 3600 s (max_job_runtime)"],
        "resources.max_runtime_s",
        id="runtime-over-max",
    ),
    pytest.param(
        "runtime_within_limit",
        {"max_runtime_s": 0},
        "fail",
        ["at least 1 s, got 0"],
        "resources.max_runtime_s",
        id="runtime-zero",
    ),
    pytest.param(
        "runtime_within_limit",
        {"max_runtime_s": -5},
        "fail",
        ["got -5"],
        "resources.max_runtime_s",
        id="runtime-negative",
    ),
    # memory_within_limit
    pytest.param(
        "memory_within_limit", {}, "pass", ["maximum of 1024 MB"], None, id="memory-default"
    ),
    pytest.param("memory_within_limit", {"memory_mb": 1024}, "pass", [], None, id="memory-at-max"),
    pytest.param(
        "memory_within_limit",
        {"memory_mb": 1025},
        "fail",
        ["1025 MB exceeds", "(max_job_memory)"],
        "resources.memory_mb",
        id="memory-over-max",
    ),
    pytest.param(
        "memory_within_limit",
        {"memory_mb": 0},
        "fail",
        ["at least 1 MB"],
        "resources.memory_mb",
        id="memory-zero",
    ),
    # queue_within_limit (max 3 queued)
    pytest.param("queue_within_limit", {"queued": 0}, "pass", [], None, id="queue-empty"),
    pytest.param(
        "queue_within_limit", {"queued": 2}, "pass", ["2 of 3"], None, id="queue-below-max"
    ),
    pytest.param(
        "queue_within_limit",
        {"queued": 3},
        "fail",
        ["You already have 3 of 3 jobs queued (max_queued_jobs_per_user)."],
        None,
        id="queue-at-max",
    ),
    pytest.param(
        "queue_within_limit", {"queued": 9}, "fail", ["9 of 3"], None, id="queue-over-max"
    ),
    pytest.param(
        "queue_within_limit",
        {"queued": 9, "for_release": True},
        "skip",
        ["already queued"],
        None,
        id="queue-skipped-on-release",
    ),
    # user_concurrency (max 2 active)
    pytest.param("user_concurrency", {"running": 0}, "pass", [], None, id="concurrency-idle"),
    pytest.param(
        "user_concurrency", {"running": 1}, "pass", ["1 of 2"], None, id="concurrency-below"
    ),
    pytest.param(
        "user_concurrency",
        {"running": 2},
        "fail",
        ["You have 2 of 2 concurrent jobs running (max_concurrent_jobs_per_user)."],
        None,
        id="concurrency-at-max",
    ),
    pytest.param(
        "user_concurrency", {"running": 5}, "fail", ["5 of 2"], None, id="concurrency-over"
    ),
    # type_quota (gpu: 1 per user)
    pytest.param(
        "type_quota", {"machine_type": "gpu"}, "pass", ["0 of 1 'gpu'"], None, id="quota-free"
    ),
    pytest.param(
        "type_quota",
        {"machine_type": "gpu", "user_by_type": {"gpu": 1}},
        "fail",
        ["You have 1 of 1 'gpu' jobs running (machine_types.gpu.per_user_quota)."],
        None,
        id="quota-full",
    ),
    pytest.param(
        "type_quota",
        {"machine_type": "cpu", "user_by_type": {"gpu": 1}},
        "pass",
        [],
        None,
        id="quota-other-type-does-not-count",
    ),
    pytest.param(
        "type_quota", {"machine_type": "tpu"}, "skip", ["unknown"], None, id="quota-unknown-type"
    ),
    # type_scale (gpu: 4 across the org)
    pytest.param(
        "type_scale",
        {"machine_type": "gpu", "org_by_type": {"gpu": 3}},
        "pass",
        ["3 of 4"],
        None,
        id="scale-below",
    ),
    pytest.param(
        "type_scale",
        {"machine_type": "gpu", "org_by_type": {"gpu": 4}},
        "fail",
        ["The organization has 4 of 4 'gpu' jobs running (machine_types.gpu.max_scale)."],
        None,
        id="scale-full",
    ),
    pytest.param(
        "type_scale",
        {"machine_type": "cpu", "org_by_type": {"gpu": 4}},
        "pass",
        [],
        None,
        id="scale-other-type-does-not-count",
    ),
    pytest.param(
        "type_scale", {"machine_type": "tpu"}, "skip", ["unknown"], None, id="scale-unknown-type"
    ),
    # deployment_concurrency (prefect.yaml concurrency_limit, collision_strategy enqueue)
    pytest.param(
        "deployment_concurrency",
        {"deployment_running": 5},
        "skip",
        ["no concurrency limit"],
        None,
        id="deployment-no-limit",
    ),
    pytest.param(
        "deployment_concurrency",
        {"deployment_limit": 1, "deployment_running": 0},
        "pass",
        ["0 of 1"],
        None,
        id="deployment-below-limit",
    ),
    pytest.param(
        "deployment_concurrency",
        {"deployment_limit": 1, "deployment_running": 1},
        "fail",
        ["The deployment has 1 of 1 jobs running (concurrency_limit)."],
        None,
        id="deployment-at-limit",
    ),
    # deployment_busy (collision_strategy cancel_new)
    pytest.param(
        "deployment_busy",
        {"deployment_limit": 1, "deployment_running": 1},
        "skip",
        ["does not reject"],
        None,
        id="busy-enqueue-does-not-reject",
    ),
    pytest.param(
        "deployment_busy",
        {"deployment_limit": 2, "deployment_running": 1, "collision_strategy": "cancel_new"},
        "pass",
        ["1 of 2"],
        None,
        id="busy-cancel-new-below",
    ),
    pytest.param(
        "deployment_busy",
        {"deployment_limit": 2, "deployment_running": 2, "collision_strategy": "cancel_new"},
        "fail",
        ["2 of 2 jobs running and rejects new ones"],
        None,
        id="busy-cancel-new-full",
    ),
]


@pytest.mark.parametrize(("rule", "overrides", "status", "words", "field"), RULE_CASES)
def test_each_rule(
    rule: str, overrides: dict[str, Any], status: str, words: list[str], field: str | None
) -> None:
    snapshot = snap(**overrides)
    outcome = RULES[rule].evaluate(snapshot)
    assert outcome == RuleOutcome(rule, RULES[rule].effect, outcome.status, outcome.reason, field)
    assert outcome.status == status
    assert outcome.passed is (status != "fail")
    assert outcome.reason.endswith(".")
    for word in words:
        assert word in outcome.reason
    # Alone (everything else fine), a failing rule is the decision, with the same reason.
    decision = decide(snapshot)
    if status == "fail":
        expected = (
            Reject(rule, outcome.reason, field)
            if RULES[rule].effect == "reject"
            else Hold(rule, outcome.reason)
        )
        assert decision == expected
    elif status == "pass":
        assert isinstance(decision, Accept)
    else:  # skipped: whatever decides, it is not this rule
        assert isinstance(decision, Accept) or decision.rule != rule


def test_role_without_the_permission_gets_the_denial_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission, "allows", lambda role, permission: False)
    decision = decide(snap())
    assert decision == Reject("role_may_submit", "Your role may not do this (jobs:submit).")


# ----------------------------------------------------------------------- order


@pytest.mark.parametrize(
    ("overrides", "rule", "kind"),
    [
        pytest.param(
            {"max_runtime_s": 99_999, "running": 2}, "runtime_within_limit", "reject",
            id="reject-beats-hold",
        ),
        pytest.param(
            {"queued": 3, "running": 2}, "queue_within_limit", "reject",
            id="queue-reject-beats-concurrency-hold",
        ),
        pytest.param(
            {"role": None, "machine_type": "tpu", "memory_mb": 0}, "role_may_submit", "reject",
            id="first-reject-wins",
        ),
        pytest.param(
            {"deployment_known": False, "inputs_readable": False}, "known_deployment", "reject",
            id="deployment-before-datasets",
        ),
        pytest.param(
            {"machine_type": "tpu", "max_runtime_s": 99_999}, "known_machine_type", "reject",
            id="machine-type-before-resources",
        ),
        pytest.param(
            {"max_runtime_s": 99_999, "memory_mb": 99_999}, "runtime_within_limit", "reject",
            id="runtime-before-memory",
        ),
        pytest.param(
            {"machine_type": "gpu", "running": 2, "user_by_type": {"gpu": 1},
             "org_by_type": {"gpu": 4}},
            "user_concurrency", "hold",
            id="concurrency-before-type-quota",
        ),
        pytest.param(
            {"machine_type": "gpu", "user_by_type": {"gpu": 1}, "org_by_type": {"gpu": 4}},
            "type_quota", "hold",
            id="type-quota-before-type-scale",
        ),
    ],
)  # fmt: skip
def test_first_failing_rule_decides(overrides: dict[str, Any], rule: str, kind: str) -> None:
    decision = decide(snap(**overrides))
    assert not isinstance(decision, Accept)
    assert decision.rule == rule
    assert decision.kind == kind


# -------------------------------------------------------------------- defaults


@pytest.mark.parametrize(
    ("memory_mb", "max_runtime_s", "expected"),
    [
        pytest.param(None, None, Accept(memory_mb=1024, max_runtime_s=3600), id="org-maxima"),
        pytest.param(512, None, Accept(memory_mb=512, max_runtime_s=3600), id="memory-given"),
        pytest.param(None, 60, Accept(memory_mb=1024, max_runtime_s=60), id="runtime-given"),
        pytest.param(1, 1, Accept(memory_mb=1, max_runtime_s=1), id="both-given"),
    ],
)
def test_accept_carries_effective_resources(
    memory_mb: int | None, max_runtime_s: int | None, expected: Accept
) -> None:
    snapshot = snap(memory_mb=memory_mb, max_runtime_s=max_runtime_s)
    assert decide(snapshot) == expected
    assert effective_resources(LIMITS, snapshot.request) == Resources(
        expected.memory_mb, expected.max_runtime_s
    )


def test_decision_kinds() -> None:
    assert (Accept.kind, Hold.kind, Reject.kind) == ("accept", "hold", "reject")


# -------------------------------------------------------------- release / claim


@pytest.mark.parametrize(
    ("overrides", "expected_rule"),
    [
        pytest.param({"queued": 3}, None, id="queue-limit-ignored"),
        pytest.param({"queued": 3, "running": 2}, "user_concurrency", id="still-held-when-full"),
        pytest.param(
            {"max_runtime_s": 7200}, "runtime_within_limit", id="limit-lowered-since-submit"
        ),
        pytest.param({"role": None}, "role_may_submit", id="submitter-left-the-org"),
        pytest.param({"deployment_known": False}, "known_deployment", id="deployment-deleted"),
        pytest.param(
            {"deployment_limit": 1, "deployment_running": 1, "collision_strategy": "cancel_new"},
            "deployment_concurrency",
            id="cancel-new-queued-job-waits-not-rejected",
        ),
        pytest.param(
            {"deployment_limit": 2, "deployment_running": 1}, None, id="deployment-slot-free"
        ),
    ],
)
def test_release(overrides: dict[str, Any], expected_rule: str | None) -> None:
    decision = decide(snap(for_release=True, **overrides))
    if expected_rule is None:
        assert isinstance(decision, Accept)
    else:
        assert not isinstance(decision, Accept)
        assert decision.rule == expected_rule


def test_claim_excluding_the_job_itself_is_not_held_by_it() -> None:
    # The user's only other slot is taken; the run being claimed holds the second slot.
    user = UserUsage(running=2, queued=0, running_by_type={"gpu": 1, "cpu": 1})
    org = OrgUsage(running_by_type={"gpu": 4})
    counted = snap(machine_type="gpu", for_release=True)
    counted = replace(counted, user=user, org=org)
    assert isinstance(decide(counted), Hold)

    excluded = replace(
        counted, user=user.without_job("gpu", active=True), org=org.without_job("gpu")
    )
    assert excluded.user == UserUsage(running=1, queued=0, running_by_type={"gpu": 0, "cpu": 1})
    assert decide(excluded) == Accept(memory_mb=1024, max_runtime_s=3600)


@pytest.mark.parametrize(
    ("usage", "active", "expected"),
    [
        pytest.param(
            UserUsage(2, 5, {"gpu": 1}), False, UserUsage(2, 4, {"gpu": 1}), id="held-job"
        ),
        pytest.param(
            UserUsage(2, 5, {"gpu": 1}), True, UserUsage(1, 5, {"gpu": 0}), id="active-job"
        ),
        pytest.param(UserUsage(0, 0, {}), True, UserUsage(0, 0, {"gpu": 0}), id="never-negative"),
        pytest.param(UserUsage(0, 0, {}), False, UserUsage(0, 0, {}), id="never-negative-held"),
    ],
)
def test_user_usage_without_job(usage: UserUsage, active: bool, expected: UserUsage) -> None:
    assert usage.without_job("gpu", active=active) == expected


def test_usage_is_a_frozen_copy() -> None:
    counts = {"gpu": 1}
    usage = UserUsage(running=1, running_by_type=counts)
    counts["gpu"] = 99
    assert usage.running_by_type["gpu"] == 1
    with pytest.raises(TypeError):
        usage.running_by_type["gpu"] = 2  # type: ignore[index]


# --------------------------------------------------------------------- explain


def test_explain_lists_every_rule_in_order() -> None:
    outcomes = explain(snap(machine_type="gpu", running=2))
    assert [o.rule for o in outcomes] == list(RULE_NAMES)
    failed = [o.rule for o in outcomes if not o.passed]
    assert failed == ["user_concurrency"]
    assert all(o.reason for o in outcomes)


def test_explain_reports_failures_past_the_deciding_one() -> None:
    outcomes = {o.rule: o for o in explain(snap(max_runtime_s=0, running=2, queued=3))}
    assert outcomes["runtime_within_limit"].status == "fail"
    assert outcomes["queue_within_limit"].status == "fail"
    assert outcomes["user_concurrency"].status == "fail"
    assert outcomes["memory_within_limit"].status == "pass"


# ------------------------------------------------------------------ properties

_limits = st.builds(
    LimitsDocument,
    organization=st.builds(
        OrganizationLimits,
        limits=st.builds(
            Limits,
            max_concurrent_jobs_per_user=st.integers(1, 50),
            max_queued_jobs_per_user=st.integers(1, 50),
            max_job_runtime=st.integers(1, 30 * 86_400),
            max_job_memory=st.integers(1, 16 * 1024 * 1024),
        ),
        machine_types=st.dictionaries(
            st.sampled_from(["cpu", "gpu", "big_mem"]),
            st.builds(
                MachineTypeLimits,
                max_scale=st.integers(1, 50),
                per_user_quota=st.integers(1, 50),
            ),
            min_size=1,
        ),
    ),
)
_counts = st.dictionaries(st.sampled_from(["cpu", "gpu", "tpu"]), st.integers(0, 60))
_snapshots = st.builds(
    AdmissionSnapshot,
    role=st.sampled_from([*Role, None]),
    limits=_limits,
    request=st.builds(
        JobRequest,
        machine_type=st.sampled_from(["cpu", "gpu", "big_mem", "tpu", ""]),
        memory_mb=st.none() | st.integers(-(2**40), 2**40),
        max_runtime_s=st.none() | st.integers(-(2**40), 2**40),
        deployment_known=st.booleans(),
        inputs_readable=st.booleans(),
        deployment_limit=st.none() | st.integers(1, 5),
        collision_strategy=st.sampled_from(["enqueue", "cancel_new"]),
    ),
    user=st.builds(UserUsage, running=st.integers(0, 60), queued=st.integers(0, 60),
                   running_by_type=_counts),
    org=st.builds(OrgUsage, running_by_type=_counts),
    for_release=st.booleans(),
    deployment_running=st.integers(0, 6),
)  # fmt: skip


@given(_snapshots)
def test_decide_never_raises_and_agrees_with_explain(snapshot: AdmissionSnapshot) -> None:
    decision = decide(snapshot)
    outcomes = explain(snapshot)
    first_failure = next((o for o in outcomes if o.status == "fail"), None)
    if first_failure is None:
        assert isinstance(decision, Accept)
        limits = snapshot.limits.limits
        assert 1 <= decision.memory_mb <= limits.max_job_memory
        assert 1 <= decision.max_runtime_s <= limits.max_job_runtime
    else:
        assert not isinstance(decision, Accept)
        assert decision.rule == first_failure.rule
        assert decision.reason == first_failure.reason
        assert decision.kind == first_failure.effect
    if isinstance(decision, Hold):  # a hold means no reject rule failed
        assert all(o.passed for o in outcomes if o.effect == "reject")
