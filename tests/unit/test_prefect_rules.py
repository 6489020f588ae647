"""The Prefect proxy's rules (policies/prefect_rules.py), table by table, and the
generated table in docs/security.md."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from policies.access import Viewer
from policies.permissions import Role
from policies.prefect_rules import (
    ENDPOINTS,
    Access,
    Actor,
    DeploymentFacts,
    FlowFacts,
    PoolFacts,
    Principal,
    RunFacts,
    Verb,
    check,
    check_run,
    endpoint_access,
    event_kind_allowed,
    event_run_ids,
    match,
    member_state_action,
    render_table,
)

ORG, OTHER_ORG = uuid.uuid4(), uuid.uuid4()
ALICE, BOB = uuid.uuid4(), uuid.uuid4()
M1, M2 = uuid.uuid4(), uuid.uuid4()
JOB_A, JOB_B = uuid.uuid4(), uuid.uuid4()

MACHINE = Actor(Principal.machine, ORG, machine_id=M1, machine_type="cpu", pool="acme-cpu")
JOB = Actor(Principal.job, ORG, user_id=ALICE, job_id=JOB_A)
MEMBER = Actor(Principal.member, ORG, user_id=ALICE, viewer=Viewer(ALICE, ORG, Role.member))
ADMIN = Actor(Principal.admin, ORG, user_id=BOB, viewer=Viewer(BOB, ORG, Role.admin))


def run(
    job: uuid.UUID = JOB_A,
    org: uuid.UUID = ORG,
    user: uuid.UUID = ALICE,
    machine: uuid.UUID | None = M1,
    state: str = "running",
    machine_type: str = "cpu",
) -> RunFacts:
    return RunFacts(job, org, user, machine, machine_type, state)


# (actor, verb, run facts) -> allowed, rule
RUN_CASES = [
    # job credential: its own run only
    (JOB, Verb.write, run(), True, "job_own_run"),
    (JOB, Verb.read, run(job=JOB_B), False, "job_own_run"),
    (JOB, Verb.write, run(job=JOB_B, user=ALICE), False, "job_own_run"),
    (JOB, Verb.write, run(org=OTHER_ORG), False, "ledger_runs"),
    (JOB, Verb.read, None, False, "ledger_runs"),
    # machine credential: runs it claimed; log lines also for runs it is offered
    (MACHINE, Verb.write, run(), True, "machine_claimed_runs"),
    (MACHINE, Verb.write, run(machine=M2), False, "machine_claimed_runs"),
    (MACHINE, Verb.read, run(machine=M2), False, "machine_claimed_runs"),
    (MACHINE, Verb.log, run(machine=None, state="scheduled"), True, "machine_offered_runs"),
    (MACHINE, Verb.write, run(machine=None, state="scheduled"), False, "machine_claimed_runs"),
    (MACHINE, Verb.log, run(machine=None, state="scheduled", machine_type="gpu"), False, None),
    (MACHINE, Verb.log, run(machine=M2, state="running"), False, "machine_claimed_runs"),
    (MACHINE, Verb.write, run(org=OTHER_ORG, machine=M1), False, "ledger_runs"),
    # members: their own jobs; admins: everyone's; only cancel/pause, never other states
    (MEMBER, Verb.read, run(), True, "member_job_scope"),
    (MEMBER, Verb.read, run(user=BOB), False, "member_job_scope"),
    (MEMBER, Verb.cancel, run(), True, "member_cancel"),
    (MEMBER, Verb.cancel, run(user=BOB), False, "member_job_scope"),
    (MEMBER, Verb.write, run(), False, "member_states"),
    (ADMIN, Verb.read, run(user=ALICE), True, "member_job_scope"),
    (ADMIN, Verb.cancel, run(user=ALICE), True, "member_cancel"),
    (ADMIN, Verb.read, run(org=OTHER_ORG), False, "ledger_runs"),
]


@pytest.mark.parametrize(("actor", "verb", "facts", "allowed", "rule"), RUN_CASES)
def test_runs(
    actor: Actor, verb: Verb, facts: RunFacts | None, allowed: bool, rule: str | None
) -> None:
    decision = check_run(actor, verb, facts)
    assert decision.allowed is allowed
    if rule is not None:
        assert decision.rule == rule
    if not allowed:
        assert decision.reason  # every denial says why


def _endpoint(label: str):
    return next(e for e in ENDPOINTS if e.label == label)


OBJECT_CASES = [
    ("GET /deployments/{id}", MEMBER, DeploymentFacts(ORG), True),
    ("GET /deployments/{id}", MEMBER, DeploymentFacts(OTHER_ORG), False),
    ("GET /deployments/{id}", MACHINE, DeploymentFacts(ORG, held_by_actor=True), True),
    ("GET /deployments/{id}", MACHINE, DeploymentFacts(ORG), False),
    ("GET /deployments/{id}", JOB, DeploymentFacts(OTHER_ORG, held_by_actor=True), False),
    ("GET /flows/{id}", MEMBER, FlowFacts(in_org=True), True),
    ("GET /flows/{id}", MEMBER, FlowFacts(in_org=False), False),
    ("GET /flows/{id}", JOB, FlowFacts(in_org=True), False),
    ("GET /flows/{id}", JOB, FlowFacts(in_org=True, held_by_actor=True), True),
    ("GET /work_pools/{name}", MACHINE, PoolFacts("acme-cpu", frozenset()), True),
    ("GET /work_pools/{name}", MACHINE, PoolFacts("acme-gpu", frozenset({"acme-gpu"})), False),
    ("GET /work_pools/{name}", MACHINE, PoolFacts("other-cpu", frozenset()), False),
    ("GET /work_pools/{name}", ADMIN, PoolFacts("acme-gpu", frozenset({"acme-gpu"})), True),
    ("GET /work_pools/{name}", MEMBER, PoolFacts("other-cpu", frozenset({"acme-cpu"})), False),
]


@pytest.mark.parametrize(("label", "actor", "facts", "allowed"), OBJECT_CASES)
def test_objects(label: str, actor: Actor, facts: object, allowed: bool) -> None:
    e = _endpoint(label)
    assert check(actor, e, e.verb, facts).allowed is allowed  # type: ignore[arg-type]


ACCESS_CASES = [
    ("POST", "/deployments/0f/create_flow_run", MEMBER, True),
    ("POST", "/deployments/0f/create_flow_run", ADMIN, True),
    ("POST", "/deployments/0f/create_flow_run", MACHINE, False),
    ("POST", "/deployments/0f/create_flow_run", JOB, False),
    ("POST", "/logs/", MEMBER, False),
    ("POST", "/logs", JOB, True),
    ("POST", "/task_runs/", MACHINE, False),
    # Raw run creation: a job's subflow runs only (the handler checks the parent).
    ("POST", "/flow_runs/", JOB, True),
    ("POST", "/flow_runs", MEMBER, False),
    ("POST", "/flow_runs/", ADMIN, False),
    ("POST", "/flow_runs/", MACHINE, False),
    ("POST", "/flows/", JOB, True),
    ("POST", "/flows/", MEMBER, False),
    ("POST", "/work_pools/acme-cpu/get_scheduled_flow_runs", MACHINE, True),
    ("POST", "/work_pools/acme-cpu/get_scheduled_flow_runs", ADMIN, False),
    ("GET", "/admin/storage", MEMBER, False),
    ("WS", "/events/in", MEMBER, False),
    ("WS", "/events/out", MEMBER, True),
]


@pytest.mark.parametrize(("method", "path", "actor", "allowed"), ACCESS_CASES)
def test_endpoint_access(method: str, path: str, actor: Actor, allowed: bool) -> None:
    found = match(method, path)
    assert found is not None
    decision = endpoint_access(found[0], actor)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.rule == f"{actor.principal.value}_endpoints"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/block_documents/abc"),  # blocks hold secrets
        ("GET", "/variables/name/x"),
        ("DELETE", "/flow_runs/abc"),
        ("POST", "/deployments/"),
        ("POST", "/work_pools/"),
        ("GET", "/flow_runs/abc/extra"),
        ("WS", "/work_pools/acme-cpu/workers/connect"),
    ],
)
def test_unlisted_endpoints_are_denied(method: str, path: str) -> None:
    assert match(method, path) is None


def test_paths_capture_their_ids() -> None:
    found = match("GET", "/work_pools/acme-cpu/queues/default")
    assert found is not None and found[1] == {"name": "acme-cpu", "queue": "default"}
    found = match("GET", "/deployments/name/train/train")
    assert found is not None and found[1] == {"flow": "train", "name": "train"}


def test_member_states() -> None:
    assert member_state_action("CANCELLING") == member_state_action("CANCELLED") == "cancel"
    assert member_state_action("PAUSED") == "pause"
    for other in ("RUNNING", "COMPLETED", "SCHEDULED", "FAILED", None):
        assert member_state_action(other) is None


RUN = uuid.uuid4()
OTHER = uuid.uuid4()


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"resource": {"prefect.resource.id": f"prefect.flow-run.{RUN}"}}, ("flow-run", {RUN})),
        (
            {
                "resource": {"prefect.resource.id": f"prefect.flow-run.{RUN}"},
                "related": [{"prefect.resource.id": f"prefect.flow-run.{OTHER}"}],
            },
            ("flow-run", {RUN, OTHER}),
        ),
        (
            {
                "resource": {"prefect.resource.id": f"prefect.task-run.{uuid.uuid4()}"},
                "payload": {"task_run": {"flow_run_id": str(RUN)}},
            },
            ("task-run", {RUN}),
        ),
        # a task run event that names no flow run cannot be attributed
        ({"resource": {"prefect.resource.id": f"prefect.task-run.{uuid.uuid4()}"}}, None),
        ({"resource": {"prefect.resource.id": "prefect.deployment.x"}}, None),
        ({"resource": {"prefect.resource.id": "prefect.flow-run.not-a-uuid"}}, None),
        ({"resource": "nope"}, None),
    ],
)
def test_event_runs(event: dict[str, object], expected: object) -> None:
    assert event_run_ids(event) == expected


def test_event_kinds() -> None:
    assert event_kind_allowed(MACHINE, "worker") and not event_kind_allowed(JOB, "worker")
    assert event_kind_allowed(JOB, "task-run") and event_kind_allowed(JOB, "flow-run")


def test_every_row_has_a_cell_for_every_principal() -> None:
    for e in ENDPOINTS:
        assert set(e.access) == set(Principal), e.label
    # Nothing a machine or job holds may create runs or touch another org's objects.
    creators = [e for e in ENDPOINTS if "create_flow_run" in e.path]
    assert all(e.access[Principal.machine] is Access.deny for e in creators)
    assert all(e.access[Principal.job] is Access.deny for e in creators)


def test_security_doc_table_is_current() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    start, end = "<!-- prefect-rules:start -->\n", "<!-- prefect-rules:end -->"
    assert start in doc and end in doc, "docs/security.md lost its table markers"
    current = doc.split(start, 1)[1].split(end, 1)[0]
    assert current == render_table(), (
        "docs/security.md is stale: regenerate the table with "
        "`python -m policies.prefect_rules` and paste it between the markers."
    )
