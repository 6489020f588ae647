"""Helpers shared by the job, dispatcher and schedule tests (no tests of its own).

- `jobs_app(db, gateway, **settings)`: the app with a given Prefect gateway (and settings
  overrides, e.g. the dispatcher on), as an in-process `ApiClient`.
- `setup_org(api, ...)`: an owner, an org with a chosen slug and limits, deployments.
- `FakePrefect`: an in-memory stand-in for `PrefectGateway` (same methods, same
  semantics for held/released/cancelled runs and idempotency keys), for dispatcher
  logic tests that must be fast and run on both databases.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from flows.gateway import (
    HELD_STATE_NAME,
    REJECTED_STATE_NAME,
    FlowRunInfo,
    FlowRunRef,
    LogLine,
    RunCreator,
    StateType,
)
from flows.models import Job
from orgs.config import Settings, get_settings
from orgs.db import Database
from tests.prefect_server import REPO_ROOT
from tests.support import ApiClient, Person

TRAIN = "flows/library/train.py:train"
ETL = "flows/library/etl.py:etl"


def settings_with(**overrides: Any) -> Settings:
    return get_settings().model_copy(update=overrides)


@contextmanager
def jobs_app(db: Database, gateway: Any, **overrides: Any) -> Iterator[ApiClient]:
    app = create_app(settings_with(**overrides), db, gateway)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield ApiClient(client, db)


def limits_doc(
    *,
    concurrent: int = 20,
    queued: int = 500,
    runtime: int = 3600,
    memory: int = 4096,
    types: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    machine_types = {
        name: {"max_scale": scale, "per_user_quota": quota}
        for name, (scale, quota) in (types or {"cpu": (100, 20)}).items()
    }
    return {
        "organization": {
            "limits": {
                "max_concurrent_jobs_per_user": concurrent,
                "max_queued_jobs_per_user": queued,
                "max_job_runtime": runtime,
                "max_job_memory": memory,
            },
            "machine_types": machine_types,
        }
    }


def parameter_schema(entrypoint: str) -> dict[str, Any]:
    """The flow's parameter schema exactly as `cshare deploy` computes it."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema as schema_of

    flow: Any = load_flow_from_entrypoint(str(REPO_ROOT / entrypoint))
    schema: dict[str, Any] = schema_of(flow.fn).model_dump_for_openapi()
    return schema


_SCHEMAS: dict[str, dict[str, Any]] = {}


def schema_for(entrypoint: str) -> dict[str, Any]:
    if entrypoint not in _SCHEMAS:
        _SCHEMAS[entrypoint] = parameter_schema(entrypoint)
    return _SCHEMAS[entrypoint]


@dataclass
class OrgSetup:
    api: ApiClient
    slug: str
    owner: Person

    def add_member(self, role: str = "member") -> Person:
        person = self.api.signup()
        self.api.add_member(self.slug, self.owner, person, role)
        return person

    def set_limits(self, doc: dict[str, Any]) -> None:
        r = self.api.put(f"/orgs/{self.slug}/settings", self.owner, json={"limits": doc})
        assert r.status_code == 200, r.text

    def deploy(
        self,
        name: str = "train",
        entrypoint: str = TRAIN,
        *,
        who: Person | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        body = {
            "name": name,
            "entrypoint": entrypoint,
            "path": str(REPO_ROOT),
            "machine_type": "cpu",
            "parameter_schema": schema_for(entrypoint),
            **extra,
        }
        r = self.api.post(f"/orgs/{self.slug}/deployments", who or self.owner, json=body)
        assert r.status_code in (200, 201), r.text
        out: dict[str, Any] = r.json()
        return out

    def submit(self, who: Person, deployment: str = "train", **body: Any) -> Any:
        return self.api.post(
            f"/orgs/{self.slug}/jobs", who, json={"deployment": deployment, **body}
        )

    def job(self, who: Person, job_id: str) -> dict[str, Any]:
        r = self.api.get(f"/orgs/{self.slug}/jobs/{job_id}", who)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


def setup_org(api: ApiClient, slug: str, limits: dict[str, Any] | None = None) -> OrgSetup:
    owner = api.signup()
    api.create_org(owner, name=f"Org {slug}", slug=slug)
    org = OrgSetup(api, slug, owner)
    if limits is not None:
        org.set_limits(limits)
    return org


def count_jobs(db: Database, **where: Any) -> int:
    with db.session(write=False) as s:
        stmt = select(func.count()).select_from(Job)
        for key, value in where.items():
            column = getattr(Job, key)
            stmt = stmt.where(
                column.in_(value) if isinstance(value, list | set | tuple) else column == value
            )
        return int(s.scalar(stmt) or 0)


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval_s)


# ------------------------------------------------------------------ in-memory Prefect


@dataclass
class _Run:
    info: FlowRunInfo
    creator: RunCreator
    job_variables: dict[str, Any]


class FakePrefect:
    """The parts of PrefectGateway the jobs code uses, in memory and thread-safe.

    `fail_next(n)` makes the next n calls raise Unavailable; `finish(run_id, state)`
    plays the worker's part.
    """

    api_url = "http://fake-prefect/api"

    def __init__(self) -> None:
        self.runs: dict[uuid.UUID, _Run] = {}
        self.by_key: dict[str, uuid.UUID] = {}
        self.calls: list[tuple[str, uuid.UUID | None]] = []
        self._lock = threading.RLock()
        self._failures = 0
        self.deployments: dict[str, uuid.UUID] = {}
        self.deleted_pools: list[str] = []

    # -- test controls --
    def fail_next(self, n: int) -> None:
        self._failures = n

    def _call(self, name: str, target: uuid.UUID | None = None) -> None:
        from policies.errors import Unavailable

        with self._lock:
            if self._failures > 0:
                self._failures -= 1
                raise Unavailable(f"fake Prefect down ({name})")
            self.calls.append((name, target))

    def _set(
        self,
        run_id: uuid.UUID,
        state: StateType,
        name: str,
        message: str | None = None,
        held: bool = False,
    ) -> FlowRunRef:
        with self._lock:
            run = self.runs[run_id]
            now = datetime.now(UTC)
            info = replace(
                run.info,
                state_type=state,
                state_name=name,
                message=message,
                start_time=run.info.start_time or (now if state is StateType.RUNNING else None),
                end_time=now if state.is_final else None,
                scheduled_time=datetime(2126, 1, 1, tzinfo=UTC) if held else now,
            )
            run.info = info
            return info.ref()

    def finish(self, run_id: uuid.UUID, state: StateType = StateType.COMPLETED) -> None:
        self._set(run_id, state, state.value.title())

    def start(self, run_id: uuid.UUID) -> None:
        self._set(run_id, StateType.RUNNING, "Running")

    def live(self) -> list[FlowRunInfo]:
        """Runs a worker could be running now: released (not held) and not over."""
        with self._lock:
            return [
                r.info for r in self.runs.values() if not r.info.is_held and not r.info.is_final
            ]

    # -- gateway surface --
    def close(self) -> None:
        pass

    def for_requests(self, budget_s: float) -> FakePrefect:
        return self

    def ensure_work_pool(self, name: str, **_: Any) -> None:
        self._call("ensure_work_pool")

    def ensure_deployment(self, *, name: str, flow_name: str, **_: Any) -> uuid.UUID:
        self._call("ensure_deployment")
        with self._lock:
            return self.deployments.setdefault(f"{flow_name}/{name}", uuid.uuid4())

    def delete_deployment(self, deployment_id: uuid.UUID) -> None:
        self._call("delete_deployment", deployment_id)

    def delete_work_pool(self, name: str) -> None:
        self._call("delete_work_pool")
        with self._lock:
            self.deleted_pools.append(name)

    def create_deployment_schedule(self, deployment_id: uuid.UUID, **_: Any) -> uuid.UUID:
        self._call("create_deployment_schedule", deployment_id)
        return uuid.uuid4()

    def set_deployment_schedule_active(self, deployment_id: uuid.UUID, *_: Any) -> None:
        self._call("set_deployment_schedule_active", deployment_id)

    def delete_deployment_schedule(self, deployment_id: uuid.UUID, *_: Any) -> None:
        self._call("delete_deployment_schedule", deployment_id)

    def create_flow_run(
        self,
        deployment_id: uuid.UUID,
        *,
        idempotency_key: str,
        parameters: Mapping[str, Any] | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        held: bool = False,
        hold_reason: str | None = None,
        job_variables: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> FlowRunRef:
        self._call("create_flow_run")
        with self._lock:
            if idempotency_key in self.by_key:
                return self.runs[self.by_key[idempotency_key]].info.ref()
            run_id = uuid.uuid4()
            info = FlowRunInfo(
                id=run_id,
                name=name or "",
                state_type=StateType.SCHEDULED,
                state_name=HELD_STATE_NAME if held else "Scheduled",
                message=hold_reason,
                start_time=None,
                end_time=None,
                total_run_time=0.0,
                tags=tuple(tags),
                work_pool_name=None,
                parameters=dict(parameters or {}),
                deployment_id=deployment_id,
                idempotency_key=idempotency_key,
            )
            self.runs[run_id] = _Run(info, RunCreator(None, None), dict(job_variables or {}))
            self.by_key[idempotency_key] = run_id
            return info.ref()

    def add_foreign_run(
        self, deployment_id: uuid.UUID, creator: RunCreator, tags: Sequence[str] = ()
    ) -> uuid.UUID:
        """A run made by Prefect's scheduler or the UI (not through our API)."""
        with self._lock:
            run_id = uuid.uuid4()
            info = FlowRunInfo(
                id=run_id,
                name="foreign",
                state_type=StateType.SCHEDULED,
                state_name="Scheduled",
                message=None,
                start_time=None,
                end_time=None,
                total_run_time=0.0,
                tags=tuple(tags),
                work_pool_name=None,
                parameters={},
                deployment_id=deployment_id,
                idempotency_key=f"scheduled {deployment_id} {creator.id} x",
                scheduled_time=datetime.now(UTC),
            )
            self.runs[run_id] = _Run(info, creator, {})
            return run_id

    def read_flow_run(self, flow_run_id: uuid.UUID) -> FlowRunInfo:
        self._call("read_flow_run", flow_run_id)
        with self._lock:
            if flow_run_id not in self.runs:
                from policies.errors import NotFound

                raise NotFound("no such run")
            return self.runs[flow_run_id].info

    def read_flow_runs(self, ids: Sequence[uuid.UUID]) -> list[FlowRunInfo]:
        self._call("read_flow_runs")
        with self._lock:
            return [self.runs[i].info for i in ids if i in self.runs]

    def read_runs_of_deployments(
        self,
        deployment_ids: Sequence[uuid.UUID],
        *,
        state_types: Sequence[StateType],
        expected_before: datetime | None = None,
        limit: int = 200,
        offset: int = 0,
    ) -> list[tuple[FlowRunInfo, RunCreator]]:
        self._call("read_runs_of_deployments")
        with self._lock:
            found = [
                (r.info, r.creator)
                for r in self.runs.values()
                if r.info.deployment_id in set(deployment_ids)
                and r.info.state_type in set(state_types)
                and not r.info.is_held
            ]
            return found[offset : offset + limit]

    def update_flow_run(self, flow_run_id: uuid.UUID, **_: Any) -> None:
        self._call("update_flow_run", flow_run_id)

    def release_flow_run(self, flow_run_id: uuid.UUID) -> FlowRunRef:
        self._call("release_flow_run", flow_run_id)
        with self._lock:
            info = self.runs[flow_run_id].info
            if not info.is_held:
                return info.ref()
            return self._set(flow_run_id, StateType.SCHEDULED, "Scheduled")

    def hold_flow_run(self, flow_run_id: uuid.UUID, reason: str) -> FlowRunRef:
        self._call("hold_flow_run", flow_run_id)
        with self._lock:
            info = self.runs[flow_run_id].info
            if info.state_type not in (StateType.SCHEDULED, StateType.PENDING):
                return info.ref()
            return self._set(flow_run_id, StateType.SCHEDULED, HELD_STATE_NAME, reason, held=True)

    def reject_flow_run(self, flow_run_id: uuid.UUID, reason: str) -> FlowRunRef:
        self._call("reject_flow_run", flow_run_id)
        with self._lock:
            info = self.runs[flow_run_id].info
            if info.is_final:
                return info.ref()
            return self._set(flow_run_id, StateType.CANCELLED, REJECTED_STATE_NAME, reason)

    def cancel_flow_run(self, flow_run_id: uuid.UUID, reason: str | None = None) -> FlowRunRef:
        self._call("cancel_flow_run", flow_run_id)
        with self._lock:
            info = self.runs[flow_run_id].info
            if info.is_final or info.state_type is StateType.CANCELLING:
                return info.ref()
            if info.state_type is StateType.RUNNING:
                return self._set(flow_run_id, StateType.CANCELLING, "Cancelling", reason)
            return self._set(flow_run_id, StateType.CANCELLED, "Cancelled", reason)

    def force_cancel_flow_run(self, flow_run_id: uuid.UUID, reason: str) -> FlowRunRef:
        self._call("force_cancel_flow_run", flow_run_id)
        with self._lock:
            info = self.runs[flow_run_id].info
            if info.is_final:
                return info.ref()
            return self._set(flow_run_id, StateType.CANCELLED, "Cancelled", reason)

    def read_logs(self, flow_run_id: uuid.UUID, offset: int = 0, limit: int = 200) -> list[LogLine]:
        self._call("read_logs", flow_run_id)
        return []

    def count_released(self, run_ids: Sequence[uuid.UUID]) -> int:
        return sum(
            1 for name, target in self.calls if name == "release_flow_run" and target in run_ids
        )
