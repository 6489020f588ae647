"""The pure parts of the job path: Prefect state -> job state, the release order,
parameter checks, cron fires, and which rule maps to which kind of error."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from flows.deployments import validate_parameters
from flows.dispatch.dispatcher import ReleaseQueue, sync_job
from flows.gateway import HELD_STATE_NAME, REJECTED_STATE_NAME, FlowRunInfo, StateType
from flows.jobs import RejectedForbidden, RejectedInvalid, RejectedLimit, rejection
from flows.models import Job
from flows.schedules import next_fires, validate_cron
from policies.admission import Reject
from policies.errors import Invalid

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def run(state: StateType, name: str = "", message: str | None = None) -> FlowRunInfo:
    return FlowRunInfo(
        id=uuid.uuid4(),
        name="r",
        state_type=state,
        state_name=name or state.value.title(),
        message=message,
        start_time=NOW - timedelta(seconds=5) if state is not StateType.SCHEDULED else None,
        end_time=NOW if state.is_final else None,
        total_run_time=0.0,
        tags=(),
        work_pool_name=None,
        parameters={},
    )


@pytest.mark.parametrize(
    ("job_state", "run_state", "name", "new_state", "action"),
    [
        ("scheduled", StateType.RUNNING, "", "running", "none"),
        ("scheduled", StateType.PENDING, "", None, "none"),
        ("held", StateType.PENDING, "", "scheduled", "none"),
        ("running", StateType.COMPLETED, "", "completed", "none"),
        ("running", StateType.FAILED, "", "failed", "none"),
        ("running", StateType.CRASHED, "", "crashed", "none"),
        ("running", StateType.CANCELLED, "", "cancelled", "none"),
        ("scheduled", StateType.CANCELLED, REJECTED_STATE_NAME, "rejected", "none"),
        ("running", StateType.CANCELLING, "", "cancelling", "none"),
        ("cancelling", StateType.RUNNING, "", None, "cancel"),
        ("cancelling", StateType.CANCELLING, "", None, "none"),
        ("cancelling", StateType.CANCELLED, "", "cancelled", "none"),
        # Drift repairs: released in the ledger but still held in Prefect, and back.
        ("scheduled", StateType.SCHEDULED, HELD_STATE_NAME, None, "release"),
        ("held", StateType.SCHEDULED, "Scheduled", None, "hold"),
        ("held", StateType.SCHEDULED, HELD_STATE_NAME, None, "none"),
        ("scheduled", StateType.SCHEDULED, "Scheduled", None, "none"),
    ],
)
def test_sync_job(
    job_state: str, run_state: StateType, name: str, new_state: str | None, action: str
) -> None:
    sync = sync_job(job_state, run(run_state, name, "why"), NOW)
    assert (sync.state, sync.action) == (new_state, action)
    assert sync.prefect_state == run_state.value
    if new_state in ("completed", "failed"):
        assert sync.ended_at == NOW and sync.started_at is not None


def test_sync_job_deleted_run_and_reasons() -> None:
    gone = sync_job("held", None, NOW)
    assert (gone.state, gone.prefect_state) == ("cancelled", "DELETED")
    assert sync_job("running", run(StateType.FAILED, message="boom"), NOW).reason == "boom"
    # Our own cancel keeps the reason we gave ("Cancelled by ...").
    assert sync_job("cancelling", run(StateType.CANCELLED, message="x"), NOW).reason is None


def job(user: uuid.UUID, priority: int = 0, minutes: int = 0, machine_type: str = "cpu") -> Job:
    return Job(
        id=uuid.uuid4(),
        user_id=user,
        priority=priority,
        machine_type=machine_type,
        created_at=NOW + timedelta(minutes=minutes),
    )


def test_release_queue_priority_then_least_recently_served() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    jobs = [job(a, minutes=i) for i in range(5)] + [job(b, minutes=10), job(c, 5, minutes=20)]
    queue = ReleaseQueue(jobs, {a: NOW - timedelta(minutes=1), b: NOW})
    order = []
    while (j := queue.next()) is not None:
        order.append(j)
        queue.served(j, NOW + timedelta(hours=1))
    assert order[0].user_id == c  # higher priority first, whoever asks
    # Then a (served longest ago), b, and a's backlog after b had its turn.
    assert [j.user_id for j in order[1:4]] == [a, b, a]
    assert [j.created_at for j in order if j.user_id == a] == sorted(
        j.created_at for j in jobs if j.user_id == a
    )


def test_release_queue_blocking() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    queue = ReleaseQueue(
        [job(a), job(a, minutes=1), job(b, minutes=2, machine_type="gpu")], {b: NOW}
    )
    first = queue.next()
    assert first is not None and first.user_id == a
    queue.block_user(a)
    second = queue.next()
    assert second is not None and second.user_id == b
    queue.block_type("gpu")
    assert queue.next() is None


SCHEMA = {
    "type": "object",
    "properties": {
        "epochs": {"type": "integer"},
        "rate": {"type": "number"},
        "name": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["epochs"],
}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"epochs": 1, "nope": 2}, "parameters.nope"),
        ({"epochs": "1"}, "parameters.epochs"),
        ({"epochs": True}, "parameters.epochs"),
        ({"epochs": 1, "rate": "fast"}, "parameters.rate"),
        ({"epochs": 1, "name": 3}, "parameters.name"),
        ({"rate": 0.1}, "parameters.epochs"),
    ],
)
def test_invalid_parameters_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(Invalid) as err:
        validate_parameters(SCHEMA, params)
    assert err.value.field == field


def test_valid_parameters_and_incomplete_defaults() -> None:
    validate_parameters(SCHEMA, {"epochs": 2, "rate": 1, "name": None})
    validate_parameters({}, {"anything": object()})  # no schema: nothing to check
    validate_parameters(SCHEMA, {"rate": 0.5}, complete=False)  # deployment defaults


def test_cron() -> None:
    assert validate_cron(" */5 * * * * ") == "*/5 * * * *"
    assert validate_cron("@hourly") == "@hourly"
    for bad in ("every minute", "* * * *", "*/5 * * * * *", "61 * * * *"):
        with pytest.raises(Invalid):
            validate_cron(bad)
    fires = next_fires("*/15 * * * *", "UTC", NOW, NOW + timedelta(hours=1))
    assert fires == [NOW + timedelta(minutes=m) for m in (15, 30, 45, 60)]
    paris = next_fires("0 9 * * *", "Europe/Paris", NOW, NOW + timedelta(days=1))
    assert paris == [datetime(2026, 1, 2, 8, 0, tzinfo=UTC)]  # 09:00 CET


def test_rejections_map_to_status_kinds() -> None:
    assert isinstance(rejection(Reject("role_may_submit", "x")), RejectedForbidden)
    assert isinstance(rejection(Reject("queue_within_limit", "x")), RejectedLimit)
    err = rejection(Reject("runtime_within_limit", "x", "resources.max_runtime_s"))
    assert isinstance(err, RejectedInvalid)
    assert (err.code, err.rule, err.field) == (
        "runtime_within_limit",
        "runtime_within_limit",
        "resources.max_runtime_s",
    )
