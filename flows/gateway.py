"""The one module of control-plane code that talks to the Prefect API.

It speaks Prefect's REST API with a plain synchronous httpx client instead of Prefect's own
client because the control plane needs three things that client does not give it:

- a bound on concurrent calls that adapts to what Prefect sustains (raw Prefect on SQLite
  answers 503 to most concurrent run creations, and even sequential writes sometimes
  collide with its own background services);
- its own retries with exponential backoff and jitter on transient failures (5xx, 429,
  connection/read errors, timeouts) -- safe because every write is idempotent: upserts,
  run creation keyed by `idempotency_key`, and state changes carrying a `transition_id`;
- a pluggable httpx transport, so tests can inject faults.

Callers get frozen dataclasses and `policies.errors` exceptions; no HTTP type leaks out.

Held runs: a run the admission policy cannot start yet is created (or put back) in a
`Scheduled` state named `AwaitingUserSlot` whose scheduled time is ~100 years ahead, with
the reason as the state message. Workers only poll for runs scheduled before
now + prefetch, so they never see it; the Prefect UI shows it with its reason.
Rejected runs end `Cancelled` named `Rejected` (grey in the UI, not a red failure: nothing
ran), with the reason as the message.

State changes are guarded: each reads the run first and only acts from states where the
change makes sense; otherwise it returns the run's current state unchanged, so callers can
repeat them safely. Prefect has no compare-and-set on states (it would, for instance,
accept `Cancelled -> Scheduled` for a deployment run), so two writers racing on one run
must be serialised by the caller (the dispatcher holds a row lock).
"""

from __future__ import annotations

import base64
import copy
import enum
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote
from uuid import UUID

import httpx

from policies.errors import Conflict, DomainError, Invalid, NotFound, Unavailable

__all__ = [
    "HELD_STATE_NAME",
    "REJECTED_STATE_NAME",
    "DeploymentInfo",
    "FlowRunInfo",
    "FlowRunRef",
    "LogLine",
    "PrefectGateway",
    "RunCreator",
    "StateType",
    "WorkPoolInfo",
    "run_tags",
    "work_pool_name",
]

log = logging.getLogger(__name__)

HELD_STATE_NAME: Final = "AwaitingUserSlot"
REJECTED_STATE_NAME: Final = "Rejected"
# Far enough that no worker's prefetch window reaches it; well inside every database's
# timestamp range (SQLite stores ISO text, PostgreSQL timestamptz goes to year 294276).
HELD_FOR: Final = timedelta(days=365 * 100)
# Prefect caps every page at PREFECT_SERVER_API_DEFAULT_LIMIT (200 by default).
_PAGE: Final = 200
_EVENTS_PAGE: Final = 50
_BACKOFF_CAP_S: Final = 5.0
# Additive increase per window of successes: slow enough that SQLite does not oscillate
# back into conflicts, fast enough to regain full width after an outage (~160 calls).
_GROWTH: Final = 0.2


class StateType(enum.StrEnum):
    """Prefect's state types (the `type` of a run's state)."""

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL: Final = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}
)


@dataclass(frozen=True, slots=True)
class WorkPoolInfo:
    id: UUID
    name: str
    type: str
    description: str | None
    concurrency_limit: int | None
    is_paused: bool
    base_job_template: Mapping[str, Any] = field(hash=False, default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    id: UUID
    name: str
    flow_id: UUID
    entrypoint: str | None
    work_pool_name: str | None
    tags: tuple[str, ...]
    parameters: Mapping[str, Any] = field(hash=False)
    description: str | None = None


@dataclass(frozen=True, slots=True)
class FlowRunRef:
    """What a state-changing call left the run in."""

    id: UUID
    state_type: StateType
    state_name: str

    @property
    def is_held(self) -> bool:
        return self.state_type is StateType.SCHEDULED and self.state_name == HELD_STATE_NAME


@dataclass(frozen=True, slots=True)
class FlowRunInfo:
    id: UUID
    name: str
    state_type: StateType
    state_name: str
    message: str | None
    start_time: datetime | None
    end_time: datetime | None
    total_run_time: float  # seconds spent Running, as Prefect accounts it
    tags: tuple[str, ...]
    work_pool_name: str | None
    parameters: Mapping[str, Any] = field(hash=False)
    deployment_id: UUID | None = None
    idempotency_key: str | None = None
    scheduled_time: datetime | None = None  # when a worker may pick it up
    created: datetime | None = None
    updated: datetime | None = None
    infrastructure_pid: str | None = None
    # The deployment schedule that made it (Prefect's `created_by` of type SCHEDULE).
    schedule_id: UUID | None = None

    @property
    def is_held(self) -> bool:
        return self.state_type is StateType.SCHEDULED and self.state_name == HELD_STATE_NAME

    @property
    def is_final(self) -> bool:
        return self.state_type.is_final

    def ref(self) -> FlowRunRef:
        return FlowRunRef(self.id, self.state_type, self.state_name)


@dataclass(frozen=True, slots=True)
class LogLine:
    timestamp: datetime
    level: int  # stdlib logging level number
    message: str

    @property
    def level_name(self) -> str:
        return logging.getLevelName(self.level)


@dataclass(frozen=True, slots=True)
class RunCreator:
    """Who made a run, as Prefect recorded it: `type` is e.g. "SCHEDULE" (then `id` is the
    deployment schedule's id) or "AUTOMATION"; None when created through the API or UI."""

    id: UUID | None
    type: str | None
    auto_scheduled: bool = False


def work_pool_name(org_slug: str, machine_type: str) -> str:
    """The Prefect work pool of an organization's machines of one type, e.g. `acme-gpu`."""
    if not org_slug or not machine_type:
        raise Invalid("An organization slug and a machine type are both required.")
    name = f"{org_slug}-{machine_type}"
    # Prefect refuses to create pools whose name starts with "prefect" (HTTP 403).
    if name.lower().startswith("prefect"):
        raise Invalid(
            f"Work pool name {name!r} is reserved by Prefect (it starts with 'prefect').",
            field="org_slug",
        )
    return name


def run_tags(org_slug: str, user_name: str, machine_type: str) -> list[str]:
    """The tags every admitted run carries: who, where, on what kind of machine."""
    return [f"org:{org_slug}", f"user:{user_name}", f"type:{machine_type}"]


class _OutOfTime(Exception):
    """A request handler's budget ran out before Prefect answered."""


class _AdaptiveWindow:
    """How many calls may be in flight right now: AIMD, like TCP congestion control.

    Prefect on SQLite gets *slower* with concurrency: concurrent writers abort each other
    (SQLITE_BUSY_SNAPSHOT -> HTTP 503), so retry storms collapse throughput. Measured on
    2 cores, 200 run creations from 32 threads: 7 s at a fixed 1 in flight; 24 s at a
    fixed 8, with a third lost after 7 attempts; ~9 s and none lost with this window.
    The window halves on every overload signal (5xx, 429, transport error) and grows by
    `_GROWTH` per window of successes, so it settles near what the server sustains:
    ~1-2 on SQLite, the full `max_concurrency` on PostgreSQL.

    Urgent callers (request handlers, someone is waiting for the answer) go ahead of
    background ones (the dispatcher): while one waits, no background call takes a slot.
    """

    def __init__(self, maximum: int) -> None:
        self._max = float(maximum)
        self._limit = float(maximum)
        self._in_flight = 0
        self._urgent_waiting = 0
        self._cond = threading.Condition()

    @property
    def limit(self) -> int:
        return int(self._limit)

    def acquire(self, *, urgent: bool = False, deadline: float | None = None) -> bool:
        """Take a slot; False if `deadline` (time.monotonic) passed first."""
        with self._cond:
            if urgent:
                self._urgent_waiting += 1
            try:
                while self._in_flight >= int(self._limit) or (not urgent and self._urgent_waiting):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                self._in_flight += 1
                return True
            finally:
                if urgent:
                    self._urgent_waiting -= 1
                    self._cond.notify_all()

    def release(self, overloaded: bool) -> None:
        with self._cond:
            self._in_flight -= 1
            if overloaded:
                self._limit = max(1.0, self._limit / 2)
            else:
                self._limit = min(self._max, self._limit + _GROWTH / self._limit)
            self._cond.notify_all()


class PrefectGateway:
    """Synchronous, thread-safe client for the parts of Prefect the control plane uses."""

    def __init__(
        self,
        api_url: str,
        auth_string: str | None = None,
        *,
        max_concurrency: int = 8,
        retries: int = 6,
        backoff_base: float = 0.1,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if retries < 0:
            raise ValueError("retries must not be negative")
        self.api_url = api_url.rstrip("/")
        # For the control plane's Prefect proxy (api/prefect_proxy), which speaks to the
        # same server; never sent anywhere but to Prefect.
        self.auth_string = auth_string
        self.retries = retries
        self.backoff_base = backoff_base
        self.timeout = timeout
        # Set on the request handlers' view (`for_requests`), unset for background work.
        self._urgent = False
        self._budget_s: float | None = None
        # Hard bound on calls in flight; the adaptive window below keeps under it.
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._window = _AdaptiveWindow(max_concurrency)
        headers = {"User-Agent": "compute-share-gateway"}
        if auth_string:
            # Exactly what Prefect's own client sends for PREFECT_API_AUTH_STRING.
            token = base64.b64encode(auth_string.encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        if transport is None:
            transport = httpx.HTTPTransport(
                limits=httpx.Limits(
                    max_connections=max_concurrency,
                    max_keepalive_connections=max_concurrency,
                    # Below uvicorn's 5 s keep-alive timeout, so we do not send on a
                    # connection the server is closing (-> ReadError).
                    keepalive_expiry=2.0,
                )
            )
        self._http = httpx.Client(
            base_url=self.api_url + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout),
            transport=transport,
        )

    def for_requests(self, budget_s: float) -> PrefectGateway:
        """A view for request handlers, sharing this gateway's connections and window.

        Its calls go ahead of background calls (the dispatcher's), and each gives up
        after `budget_s` seconds in all -- waiting for a slot, attempts and backoff --
        with `Unavailable`: someone is waiting for the answer, and the callers have a
        way on without it (a submission answers with `flow_run_id: null` and the
        dispatcher creates the run; an agent claims again). Do not close the view.
        """
        if budget_s <= 0:
            raise ValueError("budget_s must be positive")
        view = copy.copy(self)
        view._urgent = True
        view._budget_s = budget_s
        return view

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PrefectGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        ok_statuses: Iterable[int] = (),
    ) -> httpx.Response:
        """One API call with bounded concurrency and retries on transient failures.

        Returns the response for 2xx and for any status in `ok_statuses` (the caller
        handles those); raises a domain error otherwise.
        """
        accepted = set(ok_statuses)
        what = f"{method} {path.split('?')[0]}"
        failure = "no attempt made"
        retry_after: float | None = None
        deadline = None if self._budget_s is None else time.monotonic() + self._budget_s
        attempts = 0
        for attempt in range(self.retries + 1):
            if attempt and not self._sleep_before_retry(attempt, retry_after, deadline):
                break
            retry_after = None
            attempts += 1
            try:
                response = self._send(method, path, json, deadline)
            except _OutOfTime:
                failure = f"no answer within {self._budget_s:g} s"
                break
            except httpx.TransportError as exc:
                # ConnectError, ReadError, RemoteProtocolError, timeouts...: the request may
                # or may not have reached Prefect. Every write we make is idempotent, so
                # sending it again is safe.
                failure = f"{type(exc).__name__}: {exc}"
                continue
            if response.is_success or response.status_code in accepted:
                return response
            if _is_transient(response.status_code):
                failure = f"HTTP {response.status_code}"
                retry_after = _retry_after_seconds(response)
                continue
            raise _domain_error(what, response)
        log.warning("Prefect unavailable: %s, %d attempts (%s)", what, attempts, failure)
        raise Unavailable(f"Prefect did not answer {what} ({attempts} attempts; {failure}).")

    def _send(self, method: str, path: str, json: Any, deadline: float | None) -> httpx.Response:
        if not self._window.acquire(urgent=self._urgent, deadline=deadline):
            raise _OutOfTime
        overloaded = False  # running out of time is not a sign of overload
        try:
            timeout = self.timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0 or not self._slots.acquire(timeout=timeout):
                    raise _OutOfTime
            else:
                self._slots.acquire()
            overloaded = True  # until the answer says otherwise
            try:
                response = self._http.request(
                    method, path.lstrip("/"), json=json, timeout=httpx.Timeout(timeout)
                )
            finally:
                self._slots.release()
            overloaded = _is_transient(response.status_code)
            return response
        finally:
            self._window.release(overloaded)

    def _sleep_before_retry(
        self, attempt: int, retry_after: float | None, deadline: float | None
    ) -> bool:
        """Wait before the next attempt; False if the budget does not allow one."""
        # Exponential backoff with "equal jitter" (half fixed, half random), so callers
        # that failed together spread out instead of colliding again. The semaphore is
        # not held while sleeping: waiting callers do not block healthy ones.
        delay = min(_BACKOFF_CAP_S, self.backoff_base * (2 ** (attempt - 1)))
        delay = delay / 2 + random.uniform(0, delay / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, _BACKOFF_CAP_S))
        if deadline is not None and time.monotonic() + delay >= deadline:
            return False
        time.sleep(delay)
        return True

    def _get(self, path: str) -> Any:
        return self._request("GET", path).json()

    def _post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, json=body).json()

    # -- health ----------------------------------------------------------------------------

    def health(self) -> bool:
        """True when Prefect answers its health check and accepts our credentials."""
        try:
            with self._slots:
                response = self._http.get("health")
                if response.status_code != 200 or response.json() is not True:
                    return False
                # /health is exempt from auth; make one authenticated call as well.
                return self._http.get("admin/version").status_code == 200
        except (httpx.HTTPError, ValueError):
            return False

    # -- work pools, flows, deployments ----------------------------------------------------

    def ensure_work_pool(
        self,
        name: str,
        *,
        type: str = "process",
        description: str | None = None,
        base_job_template: dict[str, Any] | None = None,
        concurrency_limit: int | None = None,
    ) -> WorkPoolInfo:
        """Create the pool, or bring an existing one's description and limits up to date.

        Without a `base_job_template`, a new pool gets the worker type's default template
        when the worker class is installed here (as `prefect work-pool create` does), so
        the UI shows the job variables; an existing pool keeps its template.
        """
        if base_job_template is None:
            create_template = _default_base_job_template(type)
        else:
            create_template = base_job_template
        body: dict[str, Any] = {
            "name": name,
            "type": type,
            "description": description,
            "base_job_template": create_template,
            "concurrency_limit": concurrency_limit,
        }
        response = self._request("POST", "/work_pools/", json=body, ok_statuses=(409,))
        if response.status_code != 409:
            return _work_pool_info(response.json())
        # Already there (or our own earlier attempt landed): update what we own.
        current = _work_pool_info(self._get(f"/work_pools/{_q(name)}"))
        if current.type != type:
            raise Conflict(f"Work pool {name!r} exists with type {current.type!r}, not {type!r}.")
        update: dict[str, Any] = {
            "description": description,
            "concurrency_limit": concurrency_limit,
        }
        if base_job_template is not None:
            update["base_job_template"] = base_job_template
        self._request("PATCH", f"/work_pools/{_q(name)}", json=update)
        return _work_pool_info(self._get(f"/work_pools/{_q(name)}"))

    def read_work_pool(self, name: str) -> WorkPoolInfo:
        return _work_pool_info(self._get(f"/work_pools/{_q(name)}"))

    def delete_work_pool(self, name: str) -> None:
        """Delete a work pool (its queues go with it). Idempotent: an unknown name is
        not an error. Delete the deployments that use it first."""
        self._request("DELETE", f"/work_pools/{_q(name)}", ok_statuses=(404,))

    def ensure_flow(self, name: str) -> UUID:
        # POST /flows/ returns the existing flow for a known name (200) or creates it (201).
        return UUID(self._post("/flows/", {"name": name})["id"])

    def ensure_deployment(
        self,
        *,
        name: str,
        flow_name: str,
        entrypoint: str,
        work_pool_name: str,
        work_queue_name: str | None = None,
        path: str | None = None,
        pull_steps: Sequence[Mapping[str, Any]] | None = None,
        working_directory: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        parameter_openapi_schema: Mapping[str, Any] | None = None,
        enforce_parameter_schema: bool | None = None,
        tags: Sequence[str] = (),
        description: str | None = None,
        job_variables: Mapping[str, Any] | None = None,
        version: str | None = None,
    ) -> UUID:
        """Create or update the deployment `flow_name/name` (Prefect upserts on that pair).

        `working_directory` is shorthand for a single `set_working_directory` pull step,
        which is how a process worker finds code already present on the machine.
        Upserting keeps the deployment's existing flow runs (only runs made by Prefect's
        own scheduler are replaced).
        """
        if working_directory is not None and pull_steps is not None:
            raise Invalid("Give pull_steps or working_directory, not both.", field="pull_steps")
        if working_directory is not None:
            pull_steps = [
                {
                    "prefect.deployments.steps.set_working_directory": {
                        "directory": working_directory
                    }
                }
            ]
        flow_id = self.ensure_flow(flow_name)
        body: dict[str, Any] = {
            "name": name,
            "flow_id": str(flow_id),
            "entrypoint": entrypoint,
            "work_pool_name": work_pool_name,
            "tags": list(tags),
            "description": description,
            "parameters": dict(parameters or {}),
            "job_variables": dict(job_variables or {}),
            "path": path,
            "pull_steps": [dict(step) for step in pull_steps] if pull_steps else None,
            "version": version,
        }
        if work_queue_name is not None:
            body["work_queue_name"] = work_queue_name
        if parameter_openapi_schema is not None:
            body["parameter_openapi_schema"] = dict(parameter_openapi_schema)
        if enforce_parameter_schema is not None:
            body["enforce_parameter_schema"] = enforce_parameter_schema
        return UUID(self._post("/deployments/", body)["id"])

    def read_deployment(self, deployment_id: UUID) -> DeploymentInfo:
        return _deployment_info(self._get(f"/deployments/{deployment_id}"))

    def read_deployment_by_name(self, flow_name: str, name: str) -> DeploymentInfo:
        """The deployment `flow_name/name`, e.g. one created by `prefect deploy`."""
        return _deployment_info(self._get(f"/deployments/name/{_q(flow_name)}/{_q(name)}"))

    def delete_deployment(self, deployment_id: UUID) -> None:
        """Delete a deployment. Idempotent: an unknown id is not an error.

        Beware: Prefect deletes the deployment's not-yet-started `Scheduled` runs with it,
        held runs included; settle those jobs first.
        """
        self._request("DELETE", f"/deployments/{deployment_id}", ok_statuses=(404,))

    # -- flow runs ---------------------------------------------------------------------------

    def create_flow_run(
        self,
        deployment_id: UUID,
        *,
        idempotency_key: str,
        parameters: Mapping[str, Any] | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        held: bool = False,
        hold_reason: str | None = None,
        job_variables: Mapping[str, Any] | None = None,
        scheduled_time: datetime | None = None,
    ) -> FlowRunRef:
        """Create a run of a deployment, or return the run already made for this key.

        Prefect enforces the key per flow: a second create with the same key returns the
        first run unchanged (its parameters, tags and state), which is what makes a retry
        after a lost response safe. Pass the job id.
        """
        if not idempotency_key:
            raise Invalid("An idempotency key is required.", field="idempotency_key")
        body: dict[str, Any] = {
            "idempotency_key": idempotency_key,
            "parameters": dict(parameters or {}),
            "tags": list(tags),
            "job_variables": dict(job_variables or {}),
        }
        if name:
            body["name"] = name
        if held:
            body["state"] = _held_state(hold_reason)
        elif scheduled_time is not None:
            body["state"] = {
                "type": "SCHEDULED",
                "name": "Scheduled",
                "state_details": {"scheduled_time": _iso(scheduled_time)},
            }
        # else: Prefect's default, Scheduled at the server's "now".
        data = self._post(f"/deployments/{deployment_id}/create_flow_run", body)
        return _flow_run_info(data).ref()

    def read_flow_run(self, flow_run_id: UUID) -> FlowRunInfo:
        return _flow_run_info(self._get(f"/flow_runs/{flow_run_id}"))

    def read_flow_runs(self, ids: Sequence[UUID]) -> list[FlowRunInfo]:
        """The runs that exist among `ids` (unknown ids are left out), in `ids` order."""
        unique = list(dict.fromkeys(ids))
        found: dict[UUID, FlowRunInfo] = {}
        for start in range(0, len(unique), _PAGE):
            chunk = unique[start : start + _PAGE]
            body = {
                "flow_runs": {"id": {"any_": [str(i) for i in chunk]}},
                "limit": len(chunk),
            }
            for item in self._post("/flow_runs/filter", body):
                info = _flow_run_info(item)
                found[info.id] = info
        return [found[i] for i in unique if i in found]

    def read_flow_runs_updated_since(
        self,
        since: datetime,
        tags: Sequence[str] | None = None,
        limit: int = 200,
    ) -> list[FlowRunInfo]:
        """Runs whose state changed at or after `since` (all of `tags`, if given).

        Prefect's flow-run filter has no "updated" criterion, so this reads Prefect's
        event feed (one `prefect.flow-run.<State>` event per transition, tagged like the
        run) and then the runs' current state. Events are persisted in batches (every
        few seconds), so pollers should overlap their watermark by ~10-30 s. Returns
        up to `limit` runs, oldest change first.
        """
        filter_: dict[str, Any] = {
            "occurred": {
                "since": _iso(since),
                "until": _iso(datetime.now(UTC) + timedelta(minutes=5)),
            },
            "event": {"prefix": ["prefect.flow-run."]},
            "resource": {"id_prefix": ["prefect.flow-run."]},
            "order": "ASC",
        }
        if tags:
            # A list of related-resource filters is ANDed: the run carries every tag.
            filter_["related"] = [
                {"resources_in_roles": [[f"prefect.tag.{tag}", "tag"]]} for tag in tags
            ]
        ids: dict[UUID, None] = {}
        page = self._post("/events/filter", {"filter": filter_, "limit": _EVENTS_PAGE})
        while True:
            for event in page.get("events", []):
                resource_id = event["resource"]["prefect.resource.id"]
                ids[UUID(resource_id.removeprefix("prefect.flow-run."))] = None
                if len(ids) >= limit:
                    break
            next_page = page.get("next_page")
            if len(ids) >= limit or not next_page:
                break
            page = self._get(next_page)
        return self.read_flow_runs(list(ids))

    def count_flow_runs(
        self,
        *,
        tags: Sequence[str] | None = None,
        deployment_id: UUID | None = None,
        state_types: Sequence[StateType] | None = None,
        state_names: Sequence[str] | None = None,
    ) -> int:
        flow_runs: dict[str, Any] = {}
        if tags:
            flow_runs["tags"] = {"all_": list(tags)}
        if deployment_id is not None:
            flow_runs["deployment_id"] = {"any_": [str(deployment_id)]}
        state: dict[str, Any] = {}
        if state_types:
            state["type"] = {"any_": [str(t) for t in state_types]}
        if state_names:
            state["name"] = {"any_": list(state_names)}
        if state:
            flow_runs["state"] = state
        return int(self._post("/flow_runs/count", {"flow_runs": flow_runs}))

    def read_logs(self, flow_run_id: UUID, offset: int = 0, limit: int = 200) -> list[LogLine]:
        """A page of the run's log lines (flow and task logs), oldest first."""
        body = {
            "logs": {"flow_run_id": {"any_": [str(flow_run_id)]}},
            "sort": "TIMESTAMP_ASC",
            "offset": offset,
            "limit": min(limit, _PAGE),
        }
        return [
            LogLine(
                timestamp=_dt_required(item["timestamp"]),
                level=int(item["level"]),
                message=item["message"],
            )
            for item in self._post("/logs/filter", body)
        ]

    def ui_url_for_flow_run(self, flow_run_id: UUID) -> str:
        base = self.api_url.removesuffix("/api")
        return f"{base}/runs/flow-run/{flow_run_id}"

    # -- state changes -----------------------------------------------------------------------

    def release_flow_run(self, flow_run_id: UUID) -> FlowRunRef:
        """Let workers pick up a held run now. Only a held run is changed."""
        current = self.read_flow_run(flow_run_id)
        if not current.is_held:
            return current.ref()
        # No scheduled_time: Prefect fills in its own "now", immune to our clock skew.
        return self._set_state(flow_run_id, {"type": "SCHEDULED", "name": "Scheduled"})

    def hold_flow_run(self, flow_run_id: UUID, reason: str) -> FlowRunRef:
        """Put a not-yet-running run back in the held queue with `reason`."""
        current = self.read_flow_run(flow_run_id)
        if current.state_type not in (StateType.SCHEDULED, StateType.PENDING):
            return current.ref()
        if current.is_held and current.message == reason:
            return current.ref()
        return self._set_state(flow_run_id, _held_state(reason))

    def reject_flow_run(self, flow_run_id: UUID, reason: str) -> FlowRunRef:
        """End a run the control plane does not admit: `Cancelled` named `Rejected`.

        A run that is already running is sent to `Cancelling` instead, so its worker
        stops the process (Prefect then names it `Cancelled`).
        """
        current = self.read_flow_run(flow_run_id)
        if current.is_final or current.state_type is StateType.CANCELLING:
            return current.ref()
        if current.state_type is StateType.RUNNING:
            return self._set_state(
                flow_run_id, {"type": "CANCELLING", "name": "Cancelling", "message": reason}
            )
        return self._set_state(
            flow_run_id, {"type": "CANCELLED", "name": REJECTED_STATE_NAME, "message": reason}
        )

    def cancel_flow_run(self, flow_run_id: UUID, reason: str | None = None) -> FlowRunRef:
        """Cancel a run: `Cancelling` when a process may exist (its worker kills it and
        marks it `Cancelled`), straight to `Cancelled` otherwise."""
        current = self.read_flow_run(flow_run_id)
        if current.is_final or current.state_type is StateType.CANCELLING:
            return current.ref()
        message = reason or "Cancelled by the control plane."
        has_process = current.state_type is StateType.RUNNING or (
            current.state_type is StateType.PENDING and current.infrastructure_pid
        )
        if has_process:
            state = {"type": "CANCELLING", "name": "Cancelling", "message": message}
        else:
            state = {"type": "CANCELLED", "name": "Cancelled", "message": message}
        return self._set_state(flow_run_id, state)

    def crash_flow_run(self, flow_run_id: UUID, reason: str) -> FlowRunRef:
        """End a run whose machine is gone (agent killed, machine removed): `Crashed`.

        Added for machines (issue 4). Nobody is left to stop the process or to report
        its end, so no `Cancelling` step. Final runs are left as they are: Prefect's
        rules refuse `Crashed` after a terminal state, so a run that finished before
        its agent died keeps its real outcome.
        """
        current = self.read_flow_run(flow_run_id)
        if current.is_final:
            return current.ref()
        return self._set_state(
            flow_run_id, {"type": "CRASHED", "name": "Crashed", "message": reason}
        )

    def force_cancel_flow_run(self, flow_run_id: UUID, reason: str) -> FlowRunRef:
        """End a run nobody will finish cancelling: `Cancelled` at once, forced.

        For runs whose organization is gone (its agents are told to stop and kill
        their processes): a `Cancelling` run would wait forever for a worker to
        confirm, and Prefect's rules refuse some direct moves (e.g. out of `Paused`).
        Final runs keep their outcome: the current state is read first.
        """
        current = self.read_flow_run(flow_run_id)
        if current.is_final:
            return current.ref()
        return self._set_state(
            flow_run_id, {"type": "CANCELLED", "name": "Cancelled", "message": reason}, force=True
        )

    def _set_state(
        self, flow_run_id: UUID, state: dict[str, Any], *, force: bool = False
    ) -> FlowRunRef:
        # Orchestrated unless forced: Prefect's rules keep terminal runs terminal. The
        # transition_id makes a retried request a no-op if the first one landed.
        details = dict(state.get("state_details") or {})
        details["transition_id"] = str(uuid.uuid4())
        body = {"state": {**state, "state_details": details}, "force": force}
        result = self._post(f"/flow_runs/{flow_run_id}/set_state", body)
        new_state = result.get("state")
        if new_state and result.get("status") in ("ACCEPT", "REJECT"):
            # REJECT still carries the state Prefect chose (e.g. Cancelling a run with no
            # process becomes Cancelled) or the unchanged current state.
            return FlowRunRef(flow_run_id, StateType(new_state["type"]), new_state["name"])
        return self.read_flow_run(flow_run_id).ref()

    # == Jobs, dispatcher and schedules (issue 3) =====================================
    # Added by the jobs/dispatcher work; kept together so the gateway's owner can fold
    # them in. Same rules as above: idempotent, retried, domain errors only.

    def read_runs_of_deployments(
        self,
        deployment_ids: Sequence[UUID],
        *,
        state_types: Sequence[StateType],
        expected_before: datetime | None = None,
        limit: int = _PAGE,
        offset: int = 0,
    ) -> list[tuple[FlowRunInfo, RunCreator]]:
        """Runs of these deployments in these states (oldest expected start first), each
        with who created it (a deployment schedule, an automation, or nobody known)."""
        if not deployment_ids:
            return []
        flow_runs: dict[str, Any] = {
            "deployment_id": {"any_": [str(i) for i in deployment_ids]},
            "state": {"type": {"any_": [str(t) for t in state_types]}},
        }
        if expected_before is not None:
            flow_runs["expected_start_time"] = {"before_": _iso(expected_before)}
        body = {
            "flow_runs": flow_runs,
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": min(limit, _PAGE),
            "offset": offset,
        }
        out: list[tuple[FlowRunInfo, RunCreator]] = []
        for item in self._post("/flow_runs/filter", body):
            creator = item.get("created_by") or {}
            creator_id = creator.get("id")
            out.append(
                (
                    _flow_run_info(item),
                    RunCreator(
                        id=UUID(str(creator_id)) if creator_id else None,
                        type=creator.get("type"),
                        auto_scheduled=bool(item.get("auto_scheduled")),
                    ),
                )
            )
        return out

    def update_flow_run(
        self,
        flow_run_id: UUID,
        *,
        tags: Sequence[str] | None = None,
        job_variables: Mapping[str, Any] | None = None,
    ) -> None:
        """Replace a run's tags and/or job variables (e.g. of a run we adopted)."""
        body: dict[str, Any] = {}
        if tags is not None:
            body["tags"] = list(tags)
        if job_variables is not None:
            body["job_variables"] = dict(job_variables)
        if body:
            self._request("PATCH", f"/flow_runs/{flow_run_id}", json=body)

    def create_deployment_schedule(
        self,
        deployment_id: UUID,
        *,
        cron: str | None = None,
        timezone: str = "UTC",
        schedule: Mapping[str, Any] | None = None,
        active: bool = True,
        parameters: Mapping[str, Any] | None = None,
        slug: str | None = None,
    ) -> UUID:
        """Add a schedule to a deployment; returns the Prefect schedule id.

        `schedule` is Prefect's schedule object (`{"cron"|"interval"|"rrule": ...,
        "timezone": ...}`); `cron` + `timezone` is shorthand for a cron one. With a
        `slug` the call is idempotent: an existing schedule of that slug is updated to
        these values instead of a second one being created.
        """
        body_schedule = (
            dict(schedule) if schedule is not None else {"cron": cron, "timezone": timezone}
        )
        if slug:
            for existing in self._get(f"/deployments/{deployment_id}/schedules"):
                if existing.get("slug") == slug:
                    schedule_id = UUID(existing["id"])
                    self._request(
                        "PATCH",
                        f"/deployments/{deployment_id}/schedules/{schedule_id}",
                        json={
                            "active": active,
                            "schedule": body_schedule,
                            "parameters": dict(parameters or {}),
                        },
                    )
                    return schedule_id
        body = [
            {
                "active": active,
                "schedule": body_schedule,
                "parameters": dict(parameters or {}),
                "slug": slug,
            }
        ]
        created = self._post(f"/deployments/{deployment_id}/schedules", body)
        return UUID(created[0]["id"])

    def set_deployment_schedule_active(
        self, deployment_id: UUID, schedule_id: UUID, active: bool
    ) -> None:
        self._request(
            "PATCH",
            f"/deployments/{deployment_id}/schedules/{schedule_id}",
            json={"active": active},
        )

    def delete_deployment_schedule(self, deployment_id: UUID, schedule_id: UUID) -> None:
        """Idempotent: an unknown schedule (or deployment) is not an error."""
        self._request(
            "DELETE",
            f"/deployments/{deployment_id}/schedules/{schedule_id}",
            ok_statuses=(404,),
        )

    # == end of the jobs/dispatcher block =============================================


# -- helpers ---------------------------------------------------------------------------------


def _held_state(reason: str | None) -> dict[str, Any]:
    return {
        "type": "SCHEDULED",
        "name": HELD_STATE_NAME,
        "message": reason or "Waiting for a free slot.",
        "state_details": {"scheduled_time": _iso(datetime.now(UTC) + HELD_FOR)},
    }


def _default_base_job_template(worker_type: str) -> dict[str, Any]:
    # Imported lazily: importing prefect costs seconds and the rest of the control plane
    # never needs it. Finds the process worker and any worker type installed through the
    # prefect.collections entry point (ours included); never asks the network.
    try:
        from prefect.workers.base import BaseWorker
    except ImportError:  # pragma: no cover - prefect is a dependency
        return {}
    try:
        worker_cls = BaseWorker.get_worker_class_from_type(worker_type)
    except Exception:  # a broken third-party plugin must not break pool creation
        log.warning("could not load worker type %r", worker_type, exc_info=True)
        return {}
    if worker_cls is None:
        return {}
    template: dict[str, Any] = worker_cls.get_default_base_job_template()
    return template


def _q(name: str) -> str:
    return quote(name, safe="")


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        raise Invalid("Datetimes sent to Prefect must be timezone-aware.")
    return value.astimezone(UTC).isoformat()


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _dt_required(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _deployment_info(data: Mapping[str, Any]) -> DeploymentInfo:
    return DeploymentInfo(
        id=UUID(data["id"]),
        name=data["name"],
        flow_id=UUID(data["flow_id"]),
        entrypoint=data.get("entrypoint"),
        work_pool_name=data.get("work_pool_name"),
        tags=tuple(data.get("tags") or ()),
        parameters=data.get("parameters") or {},
        description=data.get("description"),
    )


def _work_pool_info(data: Mapping[str, Any]) -> WorkPoolInfo:
    return WorkPoolInfo(
        id=UUID(data["id"]),
        name=data["name"],
        type=data["type"],
        description=data.get("description"),
        concurrency_limit=data.get("concurrency_limit"),
        is_paused=bool(data.get("is_paused")),
        base_job_template=data.get("base_job_template") or {},
    )


def _flow_run_info(data: Mapping[str, Any]) -> FlowRunInfo:
    state = data.get("state") or {}
    details = state.get("state_details") or {}
    deployment_id = data.get("deployment_id")
    pid = data.get("infrastructure_pid")
    creator = data.get("created_by") or {}
    schedule_id = creator.get("id") if creator.get("type") == "SCHEDULE" else None
    return FlowRunInfo(
        id=UUID(data["id"]),
        name=data.get("name") or "",
        state_type=StateType(data.get("state_type") or state.get("type") or "SCHEDULED"),
        state_name=data.get("state_name") or state.get("name") or "",
        message=state.get("message"),
        start_time=_dt(data.get("start_time")),
        end_time=_dt(data.get("end_time")),
        total_run_time=float(data.get("total_run_time") or 0.0),
        tags=tuple(data.get("tags") or ()),
        work_pool_name=data.get("work_pool_name"),
        parameters=data.get("parameters") or {},
        deployment_id=UUID(deployment_id) if deployment_id else None,
        idempotency_key=data.get("idempotency_key"),
        scheduled_time=_dt(details.get("scheduled_time") or data.get("next_scheduled_start_time")),
        created=_dt(data.get("created")),
        updated=_dt(data.get("updated")),
        infrastructure_pid=str(pid) if pid else None,
        schedule_id=UUID(str(schedule_id)) if schedule_id else None,
    )


def _is_transient(status: int) -> bool:
    # 503 is Prefect's "database busy, retry" answer; any 5xx or 429 may pass.
    return status == 429 or status >= 500


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("exception_detail") or body.get("exception_message")
        if detail:
            return str(detail)[:500]
    return str(body)[:300]


def _domain_error(what: str, response: httpx.Response) -> DomainError:
    status = response.status_code
    detail = _detail(response)
    if status == 404:
        return NotFound(f"Prefect: not found ({what}): {detail}")
    if status == 409:
        return Conflict(f"Prefect refused {what}: {detail}")
    if status == 401:
        # Our own credentials for Prefect are wrong: a deployment problem, not the
        # caller's, so it must not surface as the caller being unauthenticated.
        return Unavailable(f"Prefect rejected the control plane's credentials ({what}).")
    return Invalid(f"Prefect rejected {what}: {detail}")
