"""The Prefect gateway against a real Prefect server (and, where it matters, a real worker)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from flows.gateway import (
    HELD_STATE_NAME,
    REJECTED_STATE_NAME,
    PrefectGateway,
    StateType,
    run_tags,
    work_pool_name,
)
from policies.errors import Conflict, Invalid, NotFound, Unavailable
from tests.prefect_server import PREFECT_STALL_S, REPO_ROOT, PrefectServer, wait_for_runs

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect")]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pool(prefect_gateway: PrefectGateway) -> str:
    name = _unique("gw")
    prefect_gateway.ensure_work_pool(name, description="gateway tests")
    return name


@pytest.fixture
def deployment(prefect_gateway: PrefectGateway, pool: str) -> uuid.UUID:
    return prefect_gateway.ensure_deployment(
        name=_unique("train"),
        flow_name="train",
        entrypoint="flows/library/train.py:train",
        work_pool_name=pool,
        working_directory=str(REPO_ROOT),
        parameters={"epochs": 2},
    )


# -- naming helpers (no server) -------------------------------------------------------------


def test_pool_names_and_tags() -> None:
    assert work_pool_name("acme", "gpu") == "acme-gpu"
    assert run_tags("acme", "ada", "gpu") == ["org:acme", "user:ada", "type:gpu"]
    with pytest.raises(Invalid):
        work_pool_name("prefect-lab", "cpu")  # Prefect reserves pool names "prefect*"


def test_ui_url() -> None:
    gateway = PrefectGateway("http://127.0.0.1:4200/api")
    run_id = uuid.uuid4()
    assert gateway.ui_url_for_flow_run(run_id) == f"http://127.0.0.1:4200/runs/flow-run/{run_id}"
    gateway.close()


# -- pools and deployments -----------------------------------------------------------------


def test_work_pool_upsert_is_idempotent(prefect_gateway: PrefectGateway) -> None:
    name = _unique("pool")
    first = prefect_gateway.ensure_work_pool(name, description="v1")
    second = prefect_gateway.ensure_work_pool(name, description="v2", concurrency_limit=3)
    third = prefect_gateway.ensure_work_pool(name, description="v2", concurrency_limit=3)
    assert first.id == second.id == third.id
    assert (first.description, first.concurrency_limit) == ("v1", None)
    assert (third.description, third.concurrency_limit, third.type) == ("v2", 3, "process")
    # A new process pool gets the process worker's job template, like the Prefect CLI does.
    assert "command" in third.base_job_template["job_configuration"]
    with pytest.raises(Conflict):
        prefect_gateway.ensure_work_pool(name, type="some-other-type")


def test_deployment_upsert(prefect_gateway: PrefectGateway, pool: str) -> None:
    name = _unique("dep")
    kwargs: dict[str, Any] = {
        "name": name,
        "flow_name": "train",
        "entrypoint": "flows/library/train.py:train",
        "work_pool_name": pool,
        "working_directory": str(REPO_ROOT),
    }
    first = prefect_gateway.ensure_deployment(**kwargs, tags=["a"], description="one")
    second = prefect_gateway.ensure_deployment(
        **kwargs, tags=["b"], description="two", parameters={"epochs": 3}
    )
    assert first == second
    info = prefect_gateway.read_deployment(first)
    assert info.tags == ("b",)
    assert info.parameters == {"epochs": 3}
    assert info.work_pool_name == pool
    with pytest.raises(NotFound):
        prefect_gateway.ensure_deployment(**{**kwargs, "work_pool_name": _unique("nope")})
    prefect_gateway.delete_deployment(first)
    prefect_gateway.delete_deployment(first)  # idempotent
    with pytest.raises(NotFound):
        prefect_gateway.read_deployment(first)


# -- creating runs ---------------------------------------------------------------------------


def test_held_run_shows_why_and_far_future(
    prefect_gateway: PrefectGateway, deployment: uuid.UUID
) -> None:
    ref = prefect_gateway.create_flow_run(
        deployment,
        idempotency_key=str(uuid.uuid4()),
        held=True,
        hold_reason="You already run 2 of 2 jobs.",
        tags=run_tags("acme", "ada", "cpu"),
    )
    assert (ref.state_type, ref.state_name, ref.is_held) == (
        StateType.SCHEDULED,
        HELD_STATE_NAME,
        True,
    )
    run = prefect_gateway.read_flow_run(ref.id)
    assert run.message == "You already run 2 of 2 jobs."
    assert run.scheduled_time is not None
    assert run.scheduled_time > datetime.now(UTC) + timedelta(days=365 * 50)
    assert set(run.tags) >= {"org:acme", "user:ada", "type:cpu"}
    assert run.deployment_id == deployment


def test_same_idempotency_key_returns_the_same_run(
    prefect_gateway: PrefectGateway, deployment: uuid.UUID
) -> None:
    key = str(uuid.uuid4())
    first = prefect_gateway.create_flow_run(deployment, idempotency_key=key, parameters={"seed": 1})
    again = prefect_gateway.create_flow_run(
        deployment, idempotency_key=key, parameters={"seed": 2}, held=True
    )
    assert again == first  # same id, and the first run's state: the second call changed nothing
    run = prefect_gateway.read_flow_run(first.id)
    assert run.idempotency_key == key
    assert run.parameters["seed"] == 1
    assert prefect_gateway.count_flow_runs(deployment_id=deployment) == 1


def test_invalid_and_unknown(prefect_gateway: PrefectGateway, deployment: uuid.UUID) -> None:
    with pytest.raises(NotFound):
        prefect_gateway.read_flow_run(uuid.uuid4())
    with pytest.raises(NotFound):
        prefect_gateway.create_flow_run(uuid.uuid4(), idempotency_key="x")
    with pytest.raises(Invalid):
        prefect_gateway.create_flow_run(deployment, idempotency_key="")
    with pytest.raises(Invalid):
        prefect_gateway.create_flow_run(
            deployment, idempotency_key="naive", scheduled_time=datetime(2030, 1, 1)
        )
    # Job variables are checked against the pool's job template.
    ok = prefect_gateway.create_flow_run(
        deployment, idempotency_key=str(uuid.uuid4()), job_variables={"env": {"A": "1"}}
    )
    assert ok.state_type is StateType.SCHEDULED
    with pytest.raises(Invalid, match="stream_output"):
        prefect_gateway.create_flow_run(
            deployment,
            idempotency_key=str(uuid.uuid4()),
            job_variables={"stream_output": "not a boolean"},
        )


def test_state_changes(prefect_gateway: PrefectGateway, deployment: uuid.UUID) -> None:
    def new(held: bool) -> uuid.UUID:
        return prefect_gateway.create_flow_run(
            deployment, idempotency_key=str(uuid.uuid4()), held=held, hold_reason="wait"
        ).id

    # release: held -> Scheduled now; repeating it changes nothing
    held = new(held=True)
    released = prefect_gateway.release_flow_run(held)
    assert (released.state_type, released.state_name) == (StateType.SCHEDULED, "Scheduled")
    run = prefect_gateway.read_flow_run(held)
    assert run.scheduled_time is not None
    assert abs((run.scheduled_time - datetime.now(UTC)).total_seconds()) < 60
    assert prefect_gateway.release_flow_run(held) == released

    # hold: back to the held queue with the new reason
    again = prefect_gateway.hold_flow_run(held, "over quota")
    assert again.is_held
    assert prefect_gateway.read_flow_run(held).message == "over quota"

    # reject: Cancelled named Rejected, with the reason; a rejected run cannot be released
    rejected = prefect_gateway.reject_flow_run(held, "machine type not allowed")
    assert (rejected.state_type, rejected.state_name) == (
        StateType.CANCELLED,
        REJECTED_STATE_NAME,
    )
    assert prefect_gateway.read_flow_run(held).message == "machine type not allowed"
    assert prefect_gateway.release_flow_run(held) == rejected
    assert prefect_gateway.hold_flow_run(held, "x") == rejected

    # A worker picked a run (Pending) and its claim was refused: hold it, or reject it.
    pending = new(held=False)
    prefect_gateway._set_state(pending, {"type": "PENDING", "name": "Pending"})
    assert prefect_gateway.hold_flow_run(pending, "claim: over quota").is_held
    pending = new(held=False)
    prefect_gateway._set_state(pending, {"type": "PENDING", "name": "Pending"})
    assert prefect_gateway.reject_flow_run(pending, "claim: not admitted").state_name == (
        REJECTED_STATE_NAME
    )
    # Rejecting a run that already runs sends it to Cancelling, so its worker kills it.
    running = new(held=False)
    prefect_gateway._set_state(running, {"type": "PENDING", "name": "Pending"})
    prefect_gateway._set_state(running, {"type": "RUNNING", "name": "Running"})
    assert prefect_gateway.hold_flow_run(running, "x").state_type is StateType.RUNNING
    assert prefect_gateway.release_flow_run(running).state_type is StateType.RUNNING
    stopping = prefect_gateway.reject_flow_run(running, "limits changed")
    assert stopping.state_type is StateType.CANCELLING

    # cancel: a scheduled run with no process goes straight to Cancelled
    scheduled = new(held=False)
    cancelled = prefect_gateway.cancel_flow_run(scheduled)
    assert cancelled.state_type is StateType.CANCELLED
    assert prefect_gateway.cancel_flow_run(scheduled) == cancelled
    assert prefect_gateway.read_flow_run(scheduled).end_time is not None


def test_a_run_nobody_will_finish_cancelling_is_forced_to_cancelled(
    prefect_gateway: PrefectGateway, deployment: uuid.UUID
) -> None:
    def running() -> uuid.UUID:
        run = prefect_gateway.create_flow_run(deployment, idempotency_key=str(uuid.uuid4())).id
        prefect_gateway._set_state(run, {"type": "PENDING", "name": "Pending"})
        prefect_gateway._set_state(run, {"type": "RUNNING", "name": "Running"})
        return run

    # Its agent is gone: a cancel leaves it Cancelling; forcing ends it, with the reason.
    stuck = running()
    assert prefect_gateway.cancel_flow_run(stuck).state_type is StateType.CANCELLING
    ended = prefect_gateway.force_cancel_flow_run(stuck, "The organization was deleted.")
    assert ended.state_type is StateType.CANCELLED
    assert prefect_gateway.read_flow_run(stuck).message == "The organization was deleted."
    assert prefect_gateway.force_cancel_flow_run(stuck, "again") == ended  # idempotent
    # A held run, too; a finished run keeps its outcome.
    held = prefect_gateway.create_flow_run(
        deployment, idempotency_key=str(uuid.uuid4()), held=True
    ).id
    assert prefect_gateway.force_cancel_flow_run(held, "gone").state_type is StateType.CANCELLED
    done = running()
    prefect_gateway._set_state(done, {"type": "COMPLETED", "name": "Completed"})
    assert prefect_gateway.force_cancel_flow_run(done, "gone").state_type is StateType.COMPLETED


def test_deleting_a_work_pool_is_idempotent(prefect_gateway: PrefectGateway) -> None:
    name = _unique("gone")
    prefect_gateway.ensure_work_pool(name, description="to be deleted")
    prefect_gateway.delete_work_pool(name)
    prefect_gateway.delete_work_pool(name)  # an unknown pool is not an error
    with pytest.raises(NotFound):
        prefect_gateway.read_work_pool(name)


def test_read_flow_runs_batches(prefect_gateway: PrefectGateway, deployment: uuid.UUID) -> None:
    ids = [
        prefect_gateway.create_flow_run(deployment, idempotency_key=str(uuid.uuid4())).id
        for _ in range(5)
    ]
    unknown = uuid.uuid4()
    runs = prefect_gateway.read_flow_runs([*ids, unknown, ids[0]])
    assert [run.id for run in runs] == ids


def test_runs_updated_since(prefect_gateway: PrefectGateway, deployment: uuid.UUID) -> None:
    tag = _unique("batch")
    since = datetime.now(UTC) - timedelta(seconds=1)
    both = prefect_gateway.create_flow_run(
        deployment, idempotency_key=str(uuid.uuid4()), tags=[tag, "x:1"], held=True
    )
    one = prefect_gateway.create_flow_run(deployment, idempotency_key=str(uuid.uuid4()), tags=[tag])
    prefect_gateway.release_flow_run(both.id)
    deadline = time.monotonic() + 20 + PREFECT_STALL_S  # events are persisted in batches
    while True:
        changed = {run.id for run in prefect_gateway.read_flow_runs_updated_since(since, [tag])}
        if changed >= {both.id, one.id} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert changed == {both.id, one.id}
    only_both = prefect_gateway.read_flow_runs_updated_since(since, [tag, "x:1"])
    assert [run.id for run in only_both] == [both.id]
    assert [r.state_name for r in only_both] == ["Scheduled"]  # current state, not the event's
    assert prefect_gateway.read_flow_runs_updated_since(since, [tag], limit=1)[0].id in changed
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert prefect_gateway.read_flow_runs_updated_since(later, [tag]) == []


# -- a real worker ---------------------------------------------------------------------------


def test_worker_skips_held_runs_until_released(
    prefect_gateway: PrefectGateway, pool: str, deployment: uuid.UUID, prefect_worker
) -> None:
    def create(**kwargs: Any) -> uuid.UUID:
        return prefect_gateway.create_flow_run(
            deployment, idempotency_key=str(uuid.uuid4()), **kwargs
        ).id

    held = create(held=True, hold_reason="wait")
    with prefect_worker(pool, prefetch_seconds=60):
        # A run scheduled now, picked up and running, proves the worker polls this pool...
        slow = create(parameters={"epochs": 1000, "sleep_s": 0.1})
        wait_for_runs(
            prefect_gateway,
            [slow],
            lambda r: r.state_type is StateType.RUNNING,
            60 + PREFECT_STALL_S,
        )
        # ...while the held one, in the same pool, was left alone.
        assert prefect_gateway.read_flow_run(held).is_held

        prefect_gateway.release_flow_run(held)
        # Cancelling a running run: Cancelling, the worker kills it, Cancelled.
        cancelling = prefect_gateway.cancel_flow_run(slow, "stop please")
        assert cancelling.state_type is StateType.CANCELLING
        done = wait_for_runs(prefect_gateway, [held, slow])
        assert done[held].state_type is StateType.COMPLETED
        assert done[slow].state_type is StateType.CANCELLED

        # The completed run's own log lines, in order, in pages. The flow process ships
        # its last lines after reporting Completed, so give them a moment.
        deadline = time.monotonic() + 20 + PREFECT_STALL_S
        while True:
            lines = prefect_gateway.read_logs(held)
            if any("epoch 2 loss=" in line.message for line in lines):
                break
            assert time.monotonic() < deadline, [line.message for line in lines]
            time.sleep(0.5)
    assert lines == sorted(lines, key=lambda line: line.timestamp)
    assert prefect_gateway.read_logs(held, offset=1, limit=2) == lines[1:3]
    assert {line.level_name for line in lines} <= {"DEBUG", "INFO", "WARNING", "ERROR"}


# -- failures --------------------------------------------------------------------------------


class FlakyTransport(httpx.BaseTransport):
    """Fails `rate` of calls: half before sending (ConnectError), half after the server did
    the work (the response is replaced by a 503), the case only idempotency makes safe."""

    def __init__(self, inner: httpx.BaseTransport, rate: float, seed: int = 7) -> None:
        self.inner = inner
        self.rate = rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.faults: Counter[str] = Counter()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            roll = self.rng.random()
        if roll < self.rate / 2:
            with self.lock:
                self.faults["connect"] += 1
            raise httpx.ConnectError("injected: connection refused", request=request)
        response = self.inner.handle_request(request)
        if roll < self.rate:
            response.read()
            response.close()
            with self.lock:
                self.faults["lost-response"] += 1
            return httpx.Response(503, json={"detail": "injected"}, request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_faults_lose_and_double_nothing(
    prefect_server: PrefectServer, prefect_gateway: PrefectGateway, deployment: uuid.UUID
) -> None:
    transport = FlakyTransport(httpx.HTTPTransport(), rate=0.2)
    flaky = PrefectGateway(
        prefect_server.api_url,
        prefect_server.auth_string,
        max_concurrency=8,
        transport=transport,
        backoff_base=0.05,
    )
    tag = _unique("flaky")
    keys = [str(uuid.uuid4()) for _ in range(200)]

    def submit(key: str) -> uuid.UUID:
        return flaky.create_flow_run(deployment, idempotency_key=key, tags=[tag]).id

    with ThreadPoolExecutor(32) as pool:
        ids = list(pool.map(submit, keys))
    flaky.close()

    assert transport.faults["lost-response"] > 10  # the server did work we never heard of
    assert transport.faults["connect"] > 10
    assert len(set(ids)) == 200
    assert prefect_gateway.count_flow_runs(tags=[tag]) == 200
    runs = prefect_gateway.read_flow_runs(ids)
    assert sorted(run.idempotency_key or "" for run in runs) == sorted(keys)


def test_wrong_credentials_are_unavailable_not_retried(prefect_server: PrefectServer) -> None:
    gateway = PrefectGateway(prefect_server.api_url, "wrong", retries=5, backoff_base=1.0)
    started = time.monotonic()
    assert gateway.health() is False
    with pytest.raises(Unavailable, match="credentials"):
        gateway.read_flow_run(uuid.uuid4())
    assert time.monotonic() - started < 2  # 401 is not transient: no backoff
    gateway.close()


def test_unreachable_prefect_is_unavailable() -> None:
    gateway = PrefectGateway("http://127.0.0.1:9/api", retries=2, backoff_base=0.01)
    assert gateway.health() is False
    with pytest.raises(Unavailable, match="3 attempts"):
        gateway.ensure_flow("x")
    gateway.close()


# -- request handlers' view: a time budget, and ahead of background calls ---------------------


def test_a_request_handlers_call_gives_up_at_its_budget_on_a_silent_server() -> None:
    # A real socket that accepts connections and never answers (Prefect stuck).
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/api"
    gateway = PrefectGateway(url, retries=6, timeout=30)
    view = gateway.for_requests(0.8)
    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"no answer within 0\.8 s|ReadTimeout"):
        view.read_flow_run(uuid.uuid4())
    took = time.monotonic() - started
    assert 0.7 <= took < 1.5, took
    gateway.close()
    silent.close()


def test_a_request_handlers_call_stops_retrying_at_its_budget() -> None:
    calls = Counter[str]()

    def busy(request: httpx.Request) -> httpx.Response:
        calls["sent"] += 1
        return httpx.Response(503, json={"detail": "database busy"})

    gateway = PrefectGateway(
        "http://prefect.test/api",
        retries=50,
        backoff_base=0.2,
        transport=httpx.MockTransport(busy),
    )
    started = time.monotonic()
    with pytest.raises(Unavailable, match="HTTP 503"):
        gateway.for_requests(1.0).read_flow_run(uuid.uuid4())
    took = time.monotonic() - started
    assert took < 1.2, took
    assert 2 <= calls["sent"] < 10  # retried within the budget, not 51 times
    gateway.close()


def test_request_handlers_go_ahead_of_waiting_background_calls() -> None:
    order: list[str] = []
    first_in = threading.Event()
    let_go = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        who = request.url.path.rsplit("/", 1)[-1]
        order.append(who)
        if who == "bg-first":
            first_in.set()
            let_go.wait(10)
        return httpx.Response(200, json={"ok": True})

    gateway = PrefectGateway(
        "http://prefect.test/api", max_concurrency=1, transport=httpx.MockTransport(handler)
    )
    view = gateway.for_requests(10)
    threads = [threading.Thread(target=gateway._get, args=("/x/bg-first",))]
    threads[0].start()
    assert first_in.wait(5)
    for target, path in ((gateway._get, "/x/bg-second"), (view._get, "/x/urgent")):
        threads.append(threading.Thread(target=target, args=(path,)))
        threads[-1].start()
        time.sleep(0.2)  # bg-second is waiting before urgent arrives
    let_go.set()
    for t in threads:
        t.join(10)
    assert order == ["bg-first", "urgent", "bg-second"]
    gateway.close()


def test_a_view_needs_a_positive_budget() -> None:
    gateway = PrefectGateway("http://prefect.test/api")
    with pytest.raises(ValueError):
        gateway.for_requests(0)
    gateway.close()
