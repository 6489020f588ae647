"""Who may call which Prefect API endpoint through the control plane's proxy, on what.

Prefect OSS has one shared secret and no tenants, so the control plane keeps the secret
and answers every Prefect call itself (`api/prefect_proxy`). This module is the pure
half: the endpoint table (method + path template -> what each principal may do there),
and the per-object decisions over small frozen facts the proxy looks up in the ledger.
Nothing here touches a database or the network.

Principals (the table's columns):
- `machine`: an approved machine's agent and its Prefect worker (machine token);
- `job`: one job's flow run on a machine (job token);
- `member` / `admin`: a person's session or personal token inside one organization;
  `admin` stands for every role that sees all of the organization's jobs
  (`policies.access.job_view_scope` is ALL: admins and owners).

Access kinds (the table's cells):
- `allow`: nothing organization-specific is involved (version, health);
- `own`: forwarded after the object named by the call passes the check for its verb;
- `filtered`: forwarded with the principal's scope ANDed into the filter (or the answer
  filtered), so nothing outside the scope is returned;
- `control`: Compute Share does it itself (admission for a new run, cancel);
- `deny`: 403, naming the rule. Endpoints missing from the table are denied to everyone.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from policies.access import JobFacts, Scope, Viewer, can_cancel_job, can_view_job, job_view_scope

__all__ = [
    "ENDPOINTS",
    "Access",
    "Actor",
    "Decision",
    "DeploymentFacts",
    "Endpoint",
    "FlowFacts",
    "PoolFacts",
    "Principal",
    "RunFacts",
    "Target",
    "Verb",
    "check",
    "check_run",
    "endpoint_access",
    "event_kind_allowed",
    "event_run_ids",
    "match",
    "member_scope",
    "member_state_action",
    "render_table",
]


class Principal(StrEnum):
    machine = "machine"
    job = "job"
    member = "member"
    admin = "admin"


class Access(StrEnum):
    allow = "allow"
    own = "own"
    filtered = "filtered"
    control = "control"
    deny = "deny"


class Target(StrEnum):
    """What object a call is about, and where its id is."""

    none = "none"
    run = "run"  # path {id} is a flow run
    run_in_body = "run_in_body"  # body's flow_run_id (one object or a list of them)
    task_run = "task_run"  # path {id} is a task run (its flow run decides)
    deployment = "deployment"  # path {id} is a deployment
    deployment_name = "deployment_name"  # path {flow}/{name}
    flow = "flow"  # path {id} is a flow
    pool = "pool"  # path {name} is a work pool
    filter = "filter"  # a filter body (or a streamed subscription)


class Verb(StrEnum):
    read = "read"
    write = "write"  # states, task runs, artifacts, events of a run
    log = "log"  # log lines of a run
    cancel = "cancel"  # pause, resume, cancel (members)


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str  # GET, POST, PATCH, or WS for a websocket
    path: str  # template relative to the Prefect API root, e.g. /flow_runs/{id}
    target: Target
    verb: Verb
    access: Mapping[Principal, Access] = field(hash=False)
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


def _row(
    method: str,
    path: str,
    target: Target,
    verb: Verb,
    machine: Access,
    job: Access,
    member: Access,
    admin: Access | None = None,
    note: str = "",
) -> Endpoint:
    cells = {
        Principal.machine: machine,
        Principal.job: job,
        Principal.member: member,
        Principal.admin: admin if admin is not None else member,
    }
    return Endpoint(method, path, target, verb, cells, note)


A, OWN, F, C, D = Access.allow, Access.own, Access.filtered, Access.control, Access.deny
T, V = Target, Verb

# The explicit allowlist. Notes say what "own" and "filtered" mean on each row.
ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    _row("GET", "/health", T.none, V.read, A, A, A),
    _row("GET", "/admin/version", T.none, V.read, A, A, A),
    _row("GET", "/csrf-token", T.none, V.read, A, A, A, note="Prefect's CSRF token handshake"),
    _row("GET", "/admin/storage", T.none, V.read, A, A, D, note="the default result storage id"),
    _row(
        "GET",
        "/admin/settings",
        T.none,
        V.read,
        D,
        D,
        C,
        note="the Prefect UI's sidebar reads it: people get only `SHOW_PROMOTIONAL_CONTENT: false`",
    ),
    _row(
        "POST",
        "/saved_searches/filter",
        T.none,
        V.read,
        D,
        D,
        C,
        note="saved searches are instance-wide in Prefect: people get an empty list",
    ),
    _row(
        "GET",
        "/flow_runs/{id}",
        T.run,
        V.read,
        OWN,
        OWN,
        OWN,
        note="machine: runs it claimed; job: its own run; member: own jobs; admin: the org's",
    ),
    _row(
        "PATCH",
        "/flow_runs/{id}",
        T.run,
        V.write,
        OWN,
        OWN,
        D,
        note="the engine's and worker's run updates",
    ),
    _row("PATCH", "/flow_runs/{id}/labels", T.run, V.write, OWN, OWN, D),
    _row(
        "POST",
        "/flow_runs/{id}/set_state",
        T.run,
        V.write,
        OWN,
        OWN,
        C,
        note="members: CANCELLING/CANCELLED -> job cancel, PAUSED as the role allows",
    ),
    _row("POST", "/flow_runs/{id}/resume", T.run, V.cancel, D, OWN, OWN),
    _row("POST", "/flow_runs/filter", T.filter, V.read, F, F, F, note="ids ANDed in"),
    # The Prefect UI's other run lists and charts: the same scope as /flow_runs/filter,
    # ANDed into their `flow_runs` filter (task runs through their flow run).
    _row("POST", "/flow_runs/count", T.filter, V.read, D, D, F, note="flow_runs.id ANDed in"),
    _row("POST", "/flow_runs/paginate", T.filter, V.read, D, D, F, note="flow_runs.id ANDed in"),
    _row("POST", "/flow_runs/history", T.filter, V.read, D, D, F, note="flow_runs.id ANDed in"),
    _row("POST", "/ui/flow_runs/history", T.filter, V.read, D, D, F, note="flow_runs.id ANDed in"),
    _row(
        "GET",
        "/flow_runs/{id}/graph-v2",
        T.run,
        V.read,
        D,
        D,
        OWN,
        note="the run page's graph: the run's own task runs",
    ),
    _row("POST", "/task_runs/filter", T.filter, V.read, D, D, F, note="flow_runs.id ANDed in"),
    _row("POST", "/task_runs/count", T.filter, V.read, D, D, F, note="flow_runs.id ANDed in"),
    _row("POST", "/task_runs/paginate", T.filter, V.read, D, D, F, note="flow_runs.id ANDed in"),
    _row("POST", "/task_runs/history", T.filter, V.read, D, D, F, note="flow_runs.id ANDed in"),
    _row(
        "POST",
        "/ui/task_runs/dashboard/counts",
        T.filter,
        V.read,
        D,
        D,
        F,
        note="flow_runs.id ANDed in",
    ),
    _row("POST", "/ui/task_runs/count", T.filter, V.read, D, D, F, note="flow_runs.id ANDed in"),
    _row(
        "POST",
        "/deployments/{id}/create_flow_run",
        T.deployment,
        V.write,
        D,
        D,
        C,
        note="a job submission as the member: admission, limits, held or rejected",
    ),
    _row(
        "GET",
        "/deployments/{id}",
        T.deployment,
        V.read,
        OWN,
        OWN,
        OWN,
        note="machine/job: the deployment of a run it holds; member: the org's",
    ),
    _row(
        "GET",
        "/deployments/name/{flow}/{name}",
        T.deployment_name,
        V.read,
        D,
        D,
        OWN,
        note="`flow/name` means the org's deployment `name` (Prefect's `<org>.<name>`)",
    ),
    _row("POST", "/deployments/filter", T.filter, V.read, D, D, F, note="org's deployment ids"),
    _row("POST", "/deployments/count", T.filter, V.read, D, D, F, note="org's deployment ids"),
    _row("POST", "/deployments/paginate", T.filter, V.read, D, D, F, note="org's deployment ids"),
    _row(
        "POST",
        "/flows/filter",
        T.filter,
        V.read,
        D,
        D,
        F,
        note="flows.name ANDed in: the flows of the org's deployments",
    ),
    _row("POST", "/flows/count", T.filter, V.read, D, D, F, note="flows.name ANDed in"),
    _row("POST", "/flows/paginate", T.filter, V.read, D, D, F, note="flows.name ANDed in"),
    _row("GET", "/flows/{id}", T.flow, V.read, OWN, OWN, OWN, note="flows of deployments in scope"),
    _row(
        "POST",
        "/flow_runs/",
        T.none,
        V.write,
        D,
        C,
        D,
        note="job: a subflow run under its own task run, recorded under the job",
    ),
    _row(
        "POST",
        "/flows/",
        T.none,
        V.write,
        D,
        A,
        D,
        note="a subflow's flow, by name (Prefect's flows are names, global)",
    ),
    _row("POST", "/task_runs/", T.run_in_body, V.write, D, OWN, D),
    _row("GET", "/task_runs/{id}", T.task_run, V.read, D, OWN, OWN),
    _row("POST", "/task_runs/{id}/set_state", T.task_run, V.write, D, OWN, D),
    _row(
        "POST",
        "/logs/",
        T.run_in_body,
        V.log,
        OWN,
        OWN,
        D,
        note="every line's run must pass; machine: claimed runs and runs it is offered",
    ),
    _row("POST", "/logs/filter", T.filter, V.read, F, F, F, note="flow_run_id ANDed in"),
    _row("POST", "/artifacts/", T.run_in_body, V.write, D, OWN, D),
    _row("POST", "/events", T.filter, V.write, OWN, OWN, D, note="each event's runs must pass"),
    _row(
        "POST",
        "/events/filter",
        T.filter,
        V.read,
        D,
        D,
        F,
        note="only events about a run in scope (any_resource ANDed in); first page only",
    ),
    _row("WS", "/events/in", T.filter, V.write, OWN, OWN, D, note="events of other runs dropped"),
    _row(
        "WS",
        "/events/out",
        T.filter,
        V.read,
        F,
        F,
        F,
        note="only events naming runs in scope (machine: runs it holds or is offered)",
    ),
    _row("WS", "/logs/out", T.filter, V.read, F, F, F, note="only lines of runs in scope"),
    _row("GET", "/work_pools/{name}", T.pool, V.read, OWN, D, OWN, note="machine: its own pool"),
    _row("POST", "/work_pools/filter", T.filter, V.read, F, D, F, note="pool names ANDed in"),
    _row("POST", "/work_pools/count", T.filter, V.read, D, D, F, note="pool names ANDed in"),
    _row(
        "POST",
        "/work_pools/{name}/get_scheduled_flow_runs",
        T.pool,
        V.read,
        F,
        D,
        D,
        note="only runs the ledger offers this machine (its org, its type, unclaimed or its)",
    ),
    _row("POST", "/work_pools/{name}/workers/heartbeat", T.pool, V.write, OWN, D, D),
    _row("POST", "/work_pools/{name}/queues/filter", T.pool, V.read, OWN, D, OWN),
    _row("GET", "/work_pools/{name}/queues/{queue}", T.pool, V.read, OWN, D, OWN),
    _row(
        "POST",
        "/work_pools/{name}/workers/filter",
        T.pool,
        V.read,
        D,
        D,
        OWN,
        note="the workers (machines' agents) polling the org's pool",
    ),
)

_PARAM = re.compile(r"\{(\w+)\}")


def _compile(path: str) -> re.Pattern[str]:
    # A trailing slash is optional, as Prefect's own router treats it.
    body = _PARAM.sub(r"(?P<\1>[^/]+)", path.rstrip("/"))
    return re.compile(f"^{body}/?$")


_COMPILED: Final = tuple((e, _compile(e.path)) for e in ENDPOINTS)


def match(method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
    """The table row for a call (path relative to the Prefect API root), or None."""
    method = method.upper()
    for endpoint, pattern in _COMPILED:
        if endpoint.method != method:
            continue
        found = pattern.match(path)
        if found is not None:
            return endpoint, found.groupdict()
    return None


# ------------------------------------------------------------------------ facts


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling, as the proxy authenticated them."""

    principal: Principal
    org_id: uuid.UUID
    user_id: uuid.UUID | None = None  # the member, or the job's submitter
    viewer: Viewer | None = None  # members only
    machine_id: uuid.UUID | None = None
    machine_type: str | None = None
    pool: str | None = None  # a machine's own work pool
    job_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class RunFacts:
    """A flow run as the ledger knows it (None when the ledger does not know it)."""

    job_id: uuid.UUID
    org_id: uuid.UUID
    user_id: uuid.UUID
    machine_id: uuid.UUID | None
    machine_type: str
    state: str

    def job(self) -> JobFacts:
        return JobFacts(id=self.job_id, org_id=self.org_id, user_id=self.user_id)


@dataclass(frozen=True, slots=True)
class DeploymentFacts:
    """`held_by_actor`: a run of it is the job's own, or claimed by the machine."""

    org_id: uuid.UUID
    held_by_actor: bool = False


@dataclass(frozen=True, slots=True)
class FlowFacts:
    """`in_org`: a deployment of the actor's org runs this flow; `held_by_actor`: a run
    the job or machine holds is of this flow."""

    in_org: bool
    held_by_actor: bool = False


@dataclass(frozen=True, slots=True)
class PoolFacts:
    name: str
    org_pools: frozenset[str]


Facts = RunFacts | DeploymentFacts | FlowFacts | PoolFacts | None


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


def _yes(rule: str) -> Decision:
    return Decision(True, rule, "")


def _no(rule: str, reason: str) -> Decision:
    return Decision(False, rule, reason)


_WHO: Final = {
    Principal.machine: "A machine credential",
    Principal.job: "A job credential",
    Principal.member: "A member's token",
    Principal.admin: "An admin's or owner's token",
}
_OFFERED_STATES: Final = frozenset({"scheduled", "held"})


def endpoint_access(endpoint: Endpoint, actor: Actor) -> Decision:
    """The table's cell for this actor: anything but `deny` lets the call go on to the
    object check (if any)."""
    access = endpoint.access[actor.principal]
    if access is Access.deny:
        return _no(
            f"{actor.principal.value}_endpoints",
            f"{_WHO[actor.principal]} may not call {endpoint.label} through the Prefect proxy.",
        )
    return _yes(f"{actor.principal.value}_endpoints")


def check_run(actor: Actor, verb: Verb, run: RunFacts | None) -> Decision:
    """May `actor` do `verb` to the flow run the ledger describes as `run`?"""
    if run is None or run.org_id != actor.org_id:
        # Runs the ledger does not know (made behind the control plane's back) or of
        # another organization: nobody reaches them through the proxy.
        return _no("ledger_runs", "No such flow run among the runs Compute Share admitted.")
    if actor.principal is Principal.job:
        if run.job_id == actor.job_id:
            return _yes("job_own_run")
        return _no("job_own_run", "A job credential may only act on its own flow run.")
    if actor.principal is Principal.machine:
        if run.machine_id == actor.machine_id:
            return _yes("machine_claimed_runs")
        offered = (
            run.machine_id is None
            and run.machine_type == actor.machine_type
            and run.state in _OFFERED_STATES
        )
        if verb is Verb.log and offered:
            return _yes("machine_offered_runs")
        return _no(
            "machine_claimed_runs",
            "A machine credential may only act on flow runs this machine has claimed.",
        )
    viewer = actor.viewer
    if viewer is None or not can_view_job(viewer, run.job()):
        return _no("member_job_scope", "No such flow run among the jobs you may see.")
    if verb is Verb.read:
        return _yes("member_job_scope")
    if verb is Verb.cancel and can_cancel_job(viewer, run.job()):
        return _yes("member_cancel")
    if verb is Verb.cancel:
        return _no("member_cancel", "Only admins and owners may stop other members' jobs.")
    return _no("member_states", "Members change runs only by cancelling or pausing them.")


def check(actor: Actor, endpoint: Endpoint, verb: Verb, facts: Facts) -> Decision:
    """May `actor` do `verb` to the object `facts` describe, through `endpoint`?"""
    if endpoint.target in (Target.run, Target.run_in_body, Target.task_run, Target.filter):
        assert facts is None or isinstance(facts, RunFacts)
        return check_run(actor, verb, facts)
    if isinstance(facts, DeploymentFacts):
        if facts.org_id != actor.org_id:
            return _no("org_deployments", "No such deployment in this organization.")
        if actor.principal in (Principal.member, Principal.admin) or facts.held_by_actor:
            return _yes("org_deployments")
        return _no(
            "held_run_deployment",
            "Machine and job credentials read only the deployment of a run they hold.",
        )
    if isinstance(facts, FlowFacts):
        if actor.principal in (Principal.member, Principal.admin) and facts.in_org:
            return _yes("org_flows")
        if facts.held_by_actor:
            return _yes("held_run_flow")
        return _no("org_flows", "No such flow among the deployments you may use.")
    if isinstance(facts, PoolFacts):
        if actor.principal is Principal.machine:
            if facts.name == actor.pool:
                return _yes("machine_own_pool")
            return _no("machine_own_pool", "A machine polls only its own organization's pool.")
        if facts.name in facts.org_pools:
            return _yes("org_pools")
        return _no("org_pools", "No such work pool in this organization.")
    return _no("unknown_object", "The call names nothing the proxy can check.")


def member_state_action(state_type: str | None) -> str | None:
    """What a member's set_state becomes: `cancel` (the job is cancelled), `pause`
    (forwarded if they may stop the job), or None (refused)."""
    if state_type in ("CANCELLING", "CANCELLED"):
        return "cancel"
    if state_type == "PAUSED":
        return "pause"
    return None


def member_scope(actor: Actor) -> Scope:
    """How many of the org's runs a person sees (their own jobs, or everyone's)."""
    return job_view_scope(actor.viewer) if actor.viewer is not None else Scope.NONE


# ------------------------------------------------------------------------ events


_RUN_PREFIX: Final = "prefect.flow-run."
_TASK_PREFIX: Final = "prefect.task-run."
_WORKER_PREFIX: Final = "prefect.worker."


def _uuid(text: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(text))
    except ValueError:
        return None


def event_run_ids(event: Mapping[str, Any]) -> tuple[str, set[uuid.UUID]] | None:
    """The event's resource kind and every flow run it names (resource, related, task
    run payload); None when it is malformed or about something that is not a run (or,
    for workers, that names no run)."""
    resource = event.get("resource")
    if not isinstance(resource, Mapping):
        return None
    rid = str(resource.get("prefect.resource.id", ""))
    runs: set[uuid.UUID] = set()
    if rid.startswith(_RUN_PREFIX):
        kind = "flow-run"
        run = _uuid(rid.removeprefix(_RUN_PREFIX))
        if run is None:
            return None
        runs.add(run)
    elif rid.startswith(_TASK_PREFIX):
        kind = "task-run"
    elif rid.startswith(_WORKER_PREFIX):
        kind = "worker"
    else:
        return None
    related = event.get("related") or []
    if not isinstance(related, Iterable):
        return None
    for item in related:
        if not isinstance(item, Mapping):
            return None
        rel = str(item.get("prefect.resource.id", ""))
        if rel.startswith(_RUN_PREFIX):
            run = _uuid(rel.removeprefix(_RUN_PREFIX))
            if run is None:
                return None
            runs.add(run)
    payload = event.get("payload")
    task_run = payload.get("task_run") if isinstance(payload, Mapping) else None
    if isinstance(task_run, Mapping) and task_run.get("flow_run_id") is not None:
        run = _uuid(task_run["flow_run_id"])
        if run is None:
            return None
        runs.add(run)
    if not runs:
        return None  # a task run or worker event must say which flow run it belongs to
    return kind, runs


def event_kind_allowed(actor: Actor, kind: str) -> bool:
    """Jobs write events of their run and its task runs; machines also worker events."""
    if kind == "worker":
        return actor.principal is Principal.machine
    return kind in ("flow-run", "task-run")


# ------------------------------------------------------------------------ the doc

_CELL: Final = {
    Access.allow: "allowed",
    Access.own: "own objects",
    Access.filtered: "filtered",
    Access.control: "via Compute Share",
    Access.deny: "denied",
}


def render_table() -> str:
    """The principal x endpoint table of docs/security.md, in Markdown."""
    cols = list(Principal)
    lines = [
        "| Endpoint | " + " | ".join(c.value for c in cols) + " | What it means |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for e in ENDPOINTS:
        cells = " | ".join(_CELL[e.access[c]] for c in cols)
        lines.append(f"| `{e.label}` | {cells} | {e.note} |")
    lines.append(
        "| anything else | " + " | ".join("denied" for _ in cols) + " | explicit allowlist |"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # `python -m policies.prefect_rules`: the table for the docs
    print(render_table(), end="")
