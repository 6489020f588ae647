"""The Prefect API proxy's HTTP side: authenticate, find the endpoint's rule, check the
object, then forward (streamed) with Prefect's auth, or answer as Compute Share.

Served at `/prefect/api/...` (machine and job credentials) and `/prefect/<org>/api/...`
(people's tokens; machine and job credentials of that org work there too).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api.errors import error_body, status_for
from api.prefect_proxy import actions, browser, facts, scoping
from api.prefect_proxy.browser import UiCaller
from api.prefect_proxy.principals import authenticate, credential_from_header
from api.prefect_proxy.upstream import Upstream, json_back, stream_back
from flows import subruns
from flows.gateway import PrefectGateway
from flows.jobs import AdmissionRejected
from orgs.db import Database
from policies.errors import DomainError, LimitExceeded, NotFound
from policies.prefect_rules import (
    Actor,
    Decision,
    Endpoint,
    PoolFacts,
    Principal,
    Target,
    Verb,
    check,
    check_run,
    endpoint_access,
    event_kind_allowed,
    event_run_ids,
    match,
    member_state_action,
)
from policies.prefect_ui import operator_call, parse_operators

log = logging.getLogger("cshare.prefect_proxy")

# Bodies the proxy must read to check (filters, log batches, events); Prefect's own
# log batches are at most 3 MB (PREFECT_LOGGING_TO_API_BATCH_SIZE).
MAX_INSPECTED_BYTES: Final = 16 << 20

TASK_OWNER_CACHE: Final = 50_000

T = TypeVar("T")


class ProxyError(Exception):
    def __init__(self, status: int, code: str, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra


def denied(decision: Decision) -> ProxyError:
    return ProxyError(
        403, decision.rule, f"{decision.reason} (rule: {decision.rule})", rule=decision.rule
    )


def require(decision: Decision) -> None:
    if not decision.allowed:
        raise denied(decision)


class PrefectProxy:
    def __init__(self, db: Database, upstream: Upstream) -> None:
        self.db = db
        self.upstream = upstream
        # task run -> its flow run: fixed for life, so remembered (bounded).
        self._task_owners: dict[uuid.UUID, uuid.UUID] = {}

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        """A read in a short session, in the thread pool (the loop never waits on SQL)."""

        def run() -> T:
            with self.db.session(write=False) as session:
                return fn(session, *args)

        return await run_in_threadpool(run)

    async def actor(self, header: str | None, org: str | None) -> Actor:
        return await self._db(authenticate, credential_from_header(header), org)

    # ------------------------------------------------------------------ entry

    async def handle(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except ProxyError as exc:
            return json_back(exc.status, error_body(exc.code, exc.detail, **exc.extra))
        except AdmissionRejected as exc:
            # Prefect clients retry 429 (as they do 502/503), which would re-submit a
            # rejected run: a limit's "no" goes out as 409.
            status = 409 if isinstance(exc, LimitExceeded) else status_for(exc)
            extra: dict[str, object] = {"rule": exc.rule}
            if exc.field:
                extra["field"] = exc.field
            return json_back(status, error_body(exc.rule, exc.detail, **extra))
        except DomainError as exc:
            status = 409 if isinstance(exc, LimitExceeded) else status_for(exc)
            return json_back(status, error_body(exc.code, exc.detail))

    async def ui_caller(self, request: Request, token: str, org: str | None) -> UiCaller:
        operators = parse_operators(request.app.state.settings.operators)
        return await self._db(browser.ui_caller, token, org, operators)

    async def _handle(self, request: Request) -> Response:
        org = request.path_params.get("org")
        path = "/" + str(request.path_params.get("path", ""))
        cookie = browser.cookie_session(request)
        if cookie is not None:
            # The Prefect UI in a signed-in browser (api/prefect_proxy/browser.py).
            caller = await self.ui_caller(request, cookie, org)
            if request.method == "GET" and path.rstrip("/") == "/csrf-token":
                return json_back(200, browser.csrf_token_body(request, cookie))
            browser.check_csrf(request, cookie)
            if caller.actor is None:
                require(operator_call(request.method, path))
                return await self.forward(request)
            actor = caller.actor
        else:
            actor = await self.actor(request.headers.get("authorization"), org)
        found = match(request.method, path)
        if found is None:
            raise ProxyError(
                403,
                "allowlist",
                f"{request.method} {path} is not among the Prefect endpoints the Compute "
                "Share proxy forwards (rule: allowlist).",
                rule="allowlist",
            )
        endpoint, params = found
        require(endpoint_access(endpoint, actor))
        special = _SPECIAL.get(endpoint.label)
        if special is not None:
            return await special(self, request, actor, endpoint, params)
        handler = _BY_TARGET[endpoint.target]
        return await handler(self, request, actor, endpoint, params)

    # ---------------------------------------------------------------- helpers

    async def forward(
        self, request: Request, path: str | None = None, body: bytes | None = None
    ) -> Response:
        target = path if path is not None else "/" + str(request.path_params.get("path", ""))
        content: Any = body if body is not None else request.stream()
        if request.method in ("GET", "HEAD", "DELETE") and body is None:
            content = None
        upstream = await self.upstream.open(
            request.method,
            target,
            query=request.url.query,
            headers=self.upstream.headers(request.headers),
            content=content,
        )
        return stream_back(upstream)

    async def forward_json(self, request: Request, body: Any) -> Response:
        raw = json.dumps(body, separators=(",", ":")).encode()
        return await self.forward(request, body=raw)

    async def read_json(self, request: Request) -> Any:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_INSPECTED_BYTES:
                raise ProxyError(413, "too_large", "The body is too large for the proxy.")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise ProxyError(422, "invalid", "The body is not valid JSON.") from None

    async def run_check(self, actor: Actor, run_id: uuid.UUID, verb: Verb) -> None:
        found = await self._db(facts.run_facts, [run_id])
        require(check_run(actor, verb, found.get(run_id)))

    async def runs_check(self, actor: Actor, run_ids: list[uuid.UUID], verb: Verb) -> None:
        found = await self._db(facts.run_facts, run_ids)
        for run_id in dict.fromkeys(run_ids):
            require(check_run(actor, verb, found.get(run_id)))

    async def task_run_owner(self, task_run_id: uuid.UUID) -> uuid.UUID | None:
        """The flow run of an existing task run; None when Prefect has no such task run."""
        known = self._task_owners.get(task_run_id)
        if known is not None:
            return known
        status, body = await self.upstream.json("GET", f"/task_runs/{task_run_id}")
        if status == 404:
            return None
        if status != 200 or not isinstance(body, dict):
            raise ProxyError(502, "prefect_error", "Prefect did not answer the task run lookup.")
        owner = _uuid_or_none(body.get("flow_run_id"))
        if owner is None:
            raise denied(Decision(False, "job_own_run", "The task run belongs to no flow run."))
        if len(self._task_owners) >= TASK_OWNER_CACHE:
            self._task_owners.clear()
        self._task_owners[task_run_id] = owner
        return owner

    async def read_run(self, run_id: uuid.UUID, status: int = 200) -> Response:
        code, body = await self.upstream.json("GET", f"/flow_runs/{run_id}")
        if code != 200:
            raise ProxyError(502, "prefect_error", "Prefect did not return the flow run.")
        return json_back(status, body)


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"No such {what}.") from None


def _uuid_or_none(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value is not None else None
    except ValueError:
        return None


Params = dict[str, str]
Handler = Callable[[PrefectProxy, Request, Actor, Endpoint, Params], Awaitable[Response]]


# ------------------------------------------------------------------- by target


async def _plain(p: PrefectProxy, r: Request, a: Actor, e: Endpoint, _: Params) -> Response:
    return await p.forward(r)


async def _run(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, params: dict[str, str]
) -> Response:
    await p.run_check(a, _uuid(params["id"], "flow run"), e.verb)
    return await p.forward(r)


def _body_runs(body: Any) -> list[uuid.UUID | None]:
    items = body if isinstance(body, list) else [body]
    return [_uuid_or_none(i.get("flow_run_id")) if isinstance(i, dict) else None for i in items]


async def _run_in_body(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, _: dict[str, str]
) -> Response:
    body = await p.read_json(r)
    items = body if isinstance(body, list) else [body]
    if a.principal is Principal.machine and isinstance(body, list):
        # The worker's own lines (no run) are not ours to forward.
        items = [i for i in items if isinstance(i, dict) and i.get("flow_run_id")]
        body = items
    runs = _body_runs(items)
    if not runs or any(run is None for run in runs):
        require(
            Decision(
                False, f"{a.principal.value}_own_runs", "Every entry must name a flow run you hold."
            )
        )
    await p.runs_check(a, [run for run in runs if run is not None], e.verb)
    # A task run named next to the run must be one of that run's (or not exist yet:
    # task run ids are random, made by the client that starts them).
    for item in items:
        task = _uuid_or_none(item.get("task_run_id")) if isinstance(item, dict) else None
        if task is not None:
            owner = await p.task_run_owner(task)
            if owner is not None and owner != _uuid_or_none(item.get("flow_run_id")):
                require(
                    Decision(False, "job_own_run", "That task run belongs to another flow run.")
                )
    return await p.forward_json(r, body)


async def _task_run(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, params: dict[str, str]
) -> Response:
    owner = await p.task_run_owner(_uuid(params["id"], "task run"))
    if owner is None:
        raise NotFound("No such task run.", code="task_run_not_found")
    await p.run_check(a, owner, e.verb)
    return await p.forward(r)


async def _deployment(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, params: dict[str, str]
) -> Response:
    prefect_id = _uuid(params["id"], "deployment")

    def lookup(session: Any) -> Any:
        return facts.deployment_facts(session, a, facts.deployment(session, prefect_id))

    require(check(a, e, e.verb, await p._db(lookup)))
    return await p.forward(r)


async def _deployment_name(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, params: dict[str, str]
) -> Response:
    dep = await p._db(facts.deployment_by_name, a.org_id, params["name"], a.viewer)
    if dep is None or dep.prefect_deployment_id is None:
        raise NotFound(f"No deployment '{params['name']}' in this organization.")
    return await p.forward(r, path=f"/deployments/{dep.prefect_deployment_id}")


async def _flow(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, params: dict[str, str]
) -> Response:
    status, body = await p.upstream.json("GET", f"/flows/{_uuid(params['id'], 'flow')}")
    name = body.get("name") if status == 200 and isinstance(body, dict) else None
    if not isinstance(name, str):
        raise NotFound("No such flow.", code="flow_not_found")
    require(check(a, e, e.verb, await p._db(facts.flow_facts, a, name)))
    return json_back(200, body)


async def _pool(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, params: dict[str, str]
) -> Response:
    pools = await p._db(facts.org_pools, a.org_id)
    require(check(a, e, e.verb, PoolFacts(params["name"], pools)))
    return await p.forward(r)


async def _unhandled(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, _: dict[str, str]
) -> Response:
    raise ProxyError(403, "allowlist", f"{e.label} has no handler (rule: allowlist).")


_BY_TARGET: Final[dict[Target, Handler]] = {
    Target.none: _plain,
    Target.run: _run,
    Target.run_in_body: _run_in_body,
    Target.task_run: _task_run,
    Target.deployment: _deployment,
    Target.deployment_name: _deployment_name,
    Target.flow: _flow,
    Target.pool: _pool,
    Target.filter: _unhandled,
}


# --------------------------------------------------------------------- special


async def _scoped_runs(p: PrefectProxy, a: Actor, body: Any, key: str, field: str) -> Any:
    body = _filter_object(body)

    def work(session: Any) -> Any:
        return scoping.scoped(
            body,
            key,
            field,
            among=lambda asked: list(
                facts.allowed_runs(session, a, scoping.as_uuids(asked), Verb.read)
            ),
            default=lambda: list(facts.scope_run_ids(session, a)),
        )

    return await p._db(work)


async def _flow_runs_filter(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, _: dict[str, str]
) -> Response:
    body = await _scoped_runs(p, a, await p.read_json(r), "flow_runs", "id")
    return await p.forward_json(r, body)


async def _logs_filter(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, _: dict[str, str]
) -> Response:
    body = await _scoped_runs(p, a, await p.read_json(r), "logs", "flow_run_id")
    return await p.forward_json(r, body)


def _runs_scoped(key: str, field: str) -> Handler:
    """A filter body whose `key.field` names flow runs: ANDed with the caller's runs."""

    async def handler(
        p: PrefectProxy, r: Request, a: Actor, e: Endpoint, _: dict[str, str]
    ) -> Response:
        body = await _scoped_runs(p, a, await p.read_json(r), key, field)
        return await p.forward_json(r, body)

    return handler


def _filter_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ProxyError(422, "invalid", "The filter must be a JSON object.")
    return body


async def _filter_within(
    p: PrefectProxy, r: Request, key: str, field: str, allowed: Collection[str]
) -> Response:
    """Forward a `/<key>/filter` call with `<key>.<field>` narrowed to `allowed`."""
    body = scoping.scoped(
        _filter_object(await p.read_json(r)),
        key,
        field,
        among=lambda asked: [x for x in asked if x in allowed],
        default=lambda: sorted(allowed),
    )
    return await p.forward_json(r, body)


async def _flows_filter(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, _: dict[str, str]
) -> Response:
    names = set(await p._db(facts.org_flow_names, a.org_id))
    return await _filter_within(p, r, "flows", "name", names)


async def _deployments_filter(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, _: dict[str, str]
) -> Response:
    org_ids = {str(i) for i in await p._db(facts.org_deployment_ids, a.org_id, a.viewer)}
    return await _filter_within(p, r, "deployments", "id", org_ids)


async def _work_pools_filter(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, _: dict[str, str]
) -> Response:
    pools = await p._db(facts.org_pools, a.org_id)
    if a.principal is Principal.machine:
        pools = frozenset({a.pool}) if a.pool else frozenset()
    return await _filter_within(p, r, "work_pools", "name", pools)


async def _scheduled_runs(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, params: dict[str, str]
) -> Response:
    require(check(a, e, e.verb, PoolFacts(params["name"], frozenset())))
    body = await p.read_json(r)
    status, runs = await p.upstream.json(
        "POST", f"/work_pools/{params['name']}/get_scheduled_flow_runs", body
    )
    if status != 200 or not isinstance(runs, list):
        return json_back(status, runs)
    by_id: dict[uuid.UUID, Any] = {}
    pairs: list[tuple[uuid.UUID, str | None]] = []
    for item in runs:
        run = item.get("flow_run") if isinstance(item, dict) else None
        run_id = _uuid_or_none(run.get("id")) if isinstance(run, dict) else None
        if run is not None and run_id is not None:
            by_id[run_id] = item
            pairs.append((run_id, run.get("idempotency_key")))
    offered = await p._db(facts.offered_runs, a, pairs)
    kept = [item for run_id, item in by_id.items() if run_id in offered]
    if len(kept) < len(runs):
        log.debug("scheduled runs for %s: %d of %d offered", a.machine_id, len(kept), len(runs))
    return json_back(200, kept)


async def _set_state(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, params: dict[str, str]
) -> Response:
    run_id = _uuid(params["id"], "flow run")
    if a.principal in (Principal.job, Principal.machine):
        await p.run_check(a, run_id, Verb.write)
        return await p.forward(r)
    body = await p.read_json(r)
    state = body.get("state") if isinstance(body, dict) else None
    action = member_state_action(state.get("type") if isinstance(state, dict) else None)
    if action is None:
        require(
            Decision(
                False,
                "member_states",
                "Through the proxy, people may only cancel (CANCELLING/CANCELLED) or pause "
                "(PAUSED) a run.",
            )
        )
    found = await p._db(facts.run_facts, [run_id])
    require(check_run(a, Verb.cancel, found.get(run_id)))
    if action == "pause":
        return await p.forward_json(r, body)
    gateway: PrefectGateway = r.app.state.gateway
    await run_in_threadpool(actions.cancel_run, p.db, gateway, a, found[run_id].job_id)
    _status, run = await p.upstream.json("GET", f"/flow_runs/{run_id}")
    return json_back(
        200,
        {
            "status": "ACCEPT",
            "details": {"type": "accept_details"},
            "state": run.get("state") if isinstance(run, dict) else None,
        },
    )


async def _create_flow_run(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, params: dict[str, str]
) -> Response:
    prefect_id = _uuid(params["id"], "deployment")
    body = await p.read_json(r)
    if not isinstance(body, dict):
        raise ProxyError(422, "invalid", "The body must be a JSON object.")
    gateway: PrefectGateway = r.app.state.gateway
    job = await run_in_threadpool(actions.submit_run, p.db, gateway, a, prefect_id, body)
    if job.flow_run_id is None:
        # Recorded and counted; the dispatcher creates the run when Prefect answers.
        # Not 503: Prefect clients retry those, and a retry would be a second job.
        raise ProxyError(
            504,
            "run_pending",
            f"Job {job.id} was admitted ({job.state}); Prefect is slow, so its flow run will "
            "be created shortly. See it with `cshare jobs show`.",
            job_id=str(job.id),
        )
    return await p.read_run(job.flow_run_id, status=201)


# What would route a run to a worker, or run it elsewhere: a subflow runs in its
# parent's process, never through a pool.
_SUBFLOW_REFUSED: Final = ("deployment_id", "work_pool_name", "work_queue_name", "job_variables")


async def _create_subflow_run(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, _: dict[str, str]
) -> Response:
    """`POST /flow_runs/` by a job's flow: a subflow run under one of the job's task
    runs, recorded under the job (flows.subruns). Anything else is a run Compute Share
    did not admit, so it is refused."""
    body = await p.read_json(r)
    if not isinstance(body, dict):
        raise ProxyError(422, "invalid", "The body must be a JSON object.")
    refused = [k for k in _SUBFLOW_REFUSED if body.get(k)]
    if refused:
        require(
            Decision(
                False,
                "subflow_only",
                f"A job may create subflow runs only; {', '.join(refused)} would run it "
                "elsewhere. Submit a deployment run as a job instead.",
            )
        )
    parent_task = _uuid_or_none(body.get("parent_task_run_id"))
    if parent_task is None:
        require(
            Decision(
                False,
                "subflow_only",
                "A job may create subflow runs only (with a parent_task_run_id of its own).",
            )
        )
    assert parent_task is not None
    parent_run = await p.task_run_owner(parent_task)
    if parent_run is None:
        raise NotFound("No such parent task run.", code="task_run_not_found")
    found = await p._db(facts.run_facts, [parent_run])
    parent = found.get(parent_run)
    require(check_run(a, Verb.write, parent))
    assert parent is not None
    status, created = await p.upstream.json("POST", "/flow_runs/", body)
    run_id = _uuid_or_none(created.get("id")) if isinstance(created, dict) else None
    if status not in (200, 201) or run_id is None:
        return json_back(status, created)
    await run_in_threadpool(
        subruns.record,
        p.db,
        job_id=parent.job_id,
        flow_run_id=run_id,
        parent_flow_run_id=parent_run,
    )
    return json_back(status, created)


async def _post_events(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, _: dict[str, str]
) -> Response:
    body = await p.read_json(r)
    if not isinstance(body, list):
        raise ProxyError(422, "invalid", "Events are posted as a list.")
    for event in body:
        await check_event(p, a, event)
    return await p.forward_json(r, body)


async def check_event(p: PrefectProxy, a: Actor, event: Any) -> None:
    """403 unless every run the event names is one the actor may write, its resource
    is of a kind the actor emits, and a task run it is about belongs to those runs."""
    named = event_run_ids(event) if isinstance(event, dict) else None
    if named is None or not event_kind_allowed(a, named[0]):
        require(Decision(False, "own_run_events", "Events must be about a flow run you hold."))
    assert named is not None
    kind, runs = named
    await p.runs_check(a, sorted(runs), Verb.write)
    if kind == "task-run":
        rid = str(event["resource"]["prefect.resource.id"]).removeprefix("prefect.task-run.")
        task = _uuid_or_none(rid)
        owner = await p.task_run_owner(task) if task is not None else None
        if task is None or (owner is not None and owner not in runs):
            require(Decision(False, "own_run_events", "That task run belongs to another flow run."))


async def _events_filter(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, _: dict[str, str]
) -> Response:
    body = await p.read_json(r)
    flt = body.get("filter") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(flt, dict | None):
        raise ProxyError(422, "invalid", 'The body must be {"filter": {...}}.')
    runs = await p._db(facts.scope_run_ids, a)
    if not runs:
        # Prefect reads an empty id list as "any resource": answer for it.
        return json_back(200, {"events": [], "total": 0, "next_page": None})
    flt = dict(flt or {})
    given = flt.get("any_resource")
    # A list of resource filters is ANDed by Prefect, so the scope narrows whatever the
    # caller asked for.
    scope: list[Any] = [] if given is None else list(given) if isinstance(given, list) else [given]
    scope.append({"id": [f"prefect.flow-run.{run}" for run in runs]})
    flt["any_resource"] = scope
    body["filter"] = flt
    status, out = await p.upstream.json("POST", "/events/filter", body)
    if isinstance(out, dict):
        # Next pages are not relayed (their token carries the query); nor Prefect's URL.
        out["next_page"] = None
    return json_back(status, out)


async def _ui_settings(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, _: dict[str, str]
) -> Response:
    # Prefect's settings describe the whole server; the UI needs this one flag.
    return json_back(200, {"PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": False})


async def _no_saved_searches(
    p: PrefectProxy, r: Request, a: Actor, e: Endpoint, _: dict[str, str]
) -> Response:
    return json_back(200, [])


_SPECIAL: Final[dict[str, Handler]] = {
    "GET /admin/settings": _ui_settings,
    "POST /events/filter": _events_filter,
    "POST /saved_searches/filter": _no_saved_searches,
    "POST /flow_runs/filter": _flow_runs_filter,
    "POST /logs/filter": _logs_filter,
    "POST /deployments/filter": _deployments_filter,
    "POST /work_pools/filter": _work_pools_filter,
    # The Prefect UI's lists, counts and charts (policies/prefect_ui.py).
    **{
        f"POST {path}": _runs_scoped("flow_runs", "id")
        for path in (
            "/flow_runs/count",
            "/flow_runs/paginate",
            "/flow_runs/history",
            "/ui/flow_runs/history",
            "/task_runs/filter",
            "/task_runs/count",
            "/task_runs/paginate",
            "/task_runs/history",
            "/ui/task_runs/dashboard/counts",
            "/ui/task_runs/count",
        )
    },
    "POST /deployments/count": _deployments_filter,
    "POST /deployments/paginate": _deployments_filter,
    "POST /flows/filter": _flows_filter,
    "POST /flows/count": _flows_filter,
    "POST /flows/paginate": _flows_filter,
    "POST /work_pools/count": _work_pools_filter,
    "POST /work_pools/{name}/get_scheduled_flow_runs": _scheduled_runs,
    "POST /flow_runs/{id}/set_state": _set_state,
    "POST /deployments/{id}/create_flow_run": _create_flow_run,
    "POST /flow_runs/": _create_subflow_run,
    "POST /events": _post_events,
}
