"""The agent's side of the API, authenticated with a machine token (never a user's).

- `GET /agent/me`: who am I, am I approved, what must I poll, with which credentials;
- `POST /agent/heartbeat {running}`: I am alive with these runs; same answer as /me;
- `POST /agent/claims {flow_run_id}`: may I run this? 200 `run` with the limits, or
  409 `hold`/`skip`, or 403 `reject`, each with the reason (see flows.claims).

Prefect access: by default an approved machine's agent is told to use this server's
Prefect proxy (`prefect.api_url` null: `<api>/prefect/api`) with its own machine token,
which may only read its org's pool for its type and act on the runs it claimed
(docs/security.md). Prefect's auth string never leaves the control plane. The control
plane creates the machine's work pool here, so agents never create pools. Only when an
operator sets `CSHARE_AGENT_PREFECT_API_URL` do agents talk to Prefect directly (a legacy
mode for a trusted fleet), and then receive the auth string only with
`CSHARE_AGENT_SHARE_PREFECT_AUTH=true`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from api.deps import CurrentMachine, SessionDep, SettingsDep
from api.errors import error_body
from api.routers.deployments import GatewayDep
from api.schemas import ErrorOut
from flows import claims, containers, job_tokens
from flows.deployments import ensure_org_pool
from flows.gateway import PrefectGateway, work_pool_name
from flows.models import Job
from orgs import machines
from orgs.config import Settings
from orgs.db import utcnow
from orgs.machines import MachineStatus
from orgs.models import Machine, Organization
from policies.errors import DomainError, NotFound

log = logging.getLogger("cshare.api.agent")

router = APIRouter(prefix="/agent", tags=["agent"])


class PrefectOut(BaseModel):
    api_url: str | None = Field(
        None,
        description="Prefect's URL for agents; null: this server's Prefect proxy at "
        "<api>/prefect/api, with the machine token as the credential.",
    )
    auth_string: str | None = Field(
        None, description="Prefect's shared secret (legacy direct mode only); else null."
    )


class AgentStatusOut(BaseModel):
    machine_id: uuid.UUID
    name: str
    org: str = Field(description="The organization's slug.")
    machine_type: str
    slots: int
    status: MachineStatus
    approved: bool
    reason: str | None = Field(None, description="Why the machine may not work (yet).")
    work_pool: str
    work_pool_type: str = Field(
        description="The type the control plane creates its pools with; the agent creates "
        "its pool only when that is its own worker type."
    )
    heartbeat_interval_s: float
    offline_after_s: int
    prefect: PrefectOut | None = Field(None, description="Only for approved machines.")


class HeartbeatIn(BaseModel):
    running: list[uuid.UUID] = Field(
        default_factory=list, max_length=1024, description="Flow runs the agent runs now."
    )
    free_slots: int | None = Field(None, ge=0, le=machines.MAX_SLOTS)
    docker: dict[str, Any] | None = Field(
        None, description="The Docker engine the agent reaches ({version}); null: none."
    )


class ClaimIn(BaseModel):
    flow_run_id: uuid.UUID
    running: int | None = Field(
        None, ge=0, le=machines.MAX_SLOTS, description="Runs the agent has now (not this one)."
    )


class LimitsOut(BaseModel):
    memory_mb: int
    max_runtime_s: int


class ClaimOut(BaseModel):
    decision: Literal["run"] = "run"
    flow_run_id: uuid.UUID
    job_id: uuid.UUID
    org: str = Field(description="The organization's slug.")
    machine_type: str
    user: str | None
    limits: LimitsOut
    job_token: str = Field(
        description="The flow's own credential (datasets, outputs): `CSHARE_JOB_TOKEN`."
    )
    inputs: int = Field(description="Dataset inputs the agent materialises before the run.")
    code: dict[str, Any] | None = Field(
        default=None,
        description="The job's code bundle {kind, digest, size, files}: the agent fetches "
        "it (GET /orgs/{org}/jobs/{id}/code, job token) before the run; null: none.",
    )
    container: dict[str, Any] | None = Field(
        None,
        description="A command job: {image, command, cpus, output}; run it with Docker "
        "instead of the flow (flows.containers).",
    )


class ClaimRefusedOut(ErrorOut):
    decision: Literal["hold", "reject", "skip"]
    rule: str | None = None
    flow_run_id: uuid.UUID


def _status(session: Session, settings: Settings, machine: Machine) -> AgentStatusOut:
    org = session.get(Organization, machine.org_id)
    if org is None:
        raise NotFound("The machine's organization no longer exists.")
    offline_after = machines.offline_after_s(session, machine)
    approved = machine.status == MachineStatus.approved
    reason: str | None = None
    if machine.status == MachineStatus.pending:
        reason = "Waiting for an admin of the organization to approve this machine."
    elif machine.status == MachineStatus.rejected:
        reason = "The machine was rejected by an admin" + (
            f": {machine.status_reason}" if machine.status_reason else "."
        )
    prefect = None
    if approved and settings.agent_prefect_api_url:  # legacy: straight to Prefect
        auth = settings.prefect_auth_string if settings.agent_share_prefect_auth else None
        prefect = PrefectOut(
            api_url=settings.agent_prefect_api_url,
            auth_string=auth.get_secret_value() if auth is not None else None,
        )
    elif approved:
        prefect = PrefectOut()  # through the proxy
    return AgentStatusOut(
        machine_id=machine.id,
        name=machine.name,
        org=org.slug,
        machine_type=machine.machine_type,
        slots=machine.slots,
        status=MachineStatus(machine.status),
        approved=approved,
        reason=reason,
        work_pool=work_pool_name(org.slug, machine.machine_type),
        work_pool_type=settings.work_pool_type,
        # At least three heartbeats fit in the offline window.
        heartbeat_interval_s=min(settings.agent_heartbeat_interval_s, offline_after / 3),
        offline_after_s=offline_after,
        prefect=prefect,
    )


# Pools this process has made sure of (or is making sure of), by (org id, machine type):
# an approved agent's call creates its pool once; later calls cost nothing.
_pools_ensured: set[tuple[uuid.UUID, str]] = set()
_pools_lock = threading.Lock()


def _ensure_pool(
    out: AgentStatusOut,
    session: Session,
    machine: Machine,
    settings: Settings,
    gateway: PrefectGateway,
) -> None:
    """The machine's pool exists in Prefect, made on a thread of its own: an agent's call
    never waits on Prefect. The agent's worker re-reads its pool every few seconds."""
    key = (machine.org_id, machine.machine_type)
    org = session.get(Organization, machine.org_id)
    if not out.approved or org is None:
        return
    with _pools_lock:
        if key in _pools_ensured:
            return
        _pools_ensured.add(key)

    # Plain values: the thread outlives this request's session.
    slug, name, machine_type = org.slug, org.name, machine.machine_type

    def ensure() -> None:
        try:
            ensure_org_pool(gateway, slug, name, machine_type, settings.work_pool_type)
        except Exception as exc:  # Prefect down, or shutting down: the next call tries again
            detail = exc.detail if isinstance(exc, DomainError) else type(exc).__name__
            log.warning("work pool %s not ensured yet: %s", out.work_pool, detail)
            with _pools_lock:
                _pools_ensured.discard(key)

    threading.Thread(target=ensure, name="cshare-ensure-pool", daemon=True).start()


@router.get("/me")
def me(
    machine: CurrentMachine,
    session: SessionDep,
    settings: SettingsDep,
    gateway: GatewayDep,
) -> AgentStatusOut:
    out = _status(session, settings, machine)
    _ensure_pool(out, session, machine, settings, gateway)
    return out


@router.post("/heartbeat")
def heartbeat(
    body: HeartbeatIn,
    machine: CurrentMachine,
    session: SessionDep,
    settings: SettingsDep,
    gateway: GatewayDep,
) -> AgentStatusOut:
    machines.heartbeat(session, machine, running=len(body.running), now=utcnow())
    if "docker" in body.model_fields_set:
        machines.note_docker(machine, body.docker)
    out = _status(session, settings, machine)
    session.commit()
    if out.approved:
        _ensure_pool(out, session, machine, settings, gateway)
        try:
            claims.reconcile_heartbeat(session, gateway, machine, set(body.running))
        except Exception:  # the sweep catches what this misses; the heartbeat counts
            log.warning("heartbeat reconciliation failed for %s", machine.id, exc_info=True)
    return out


_REFUSED_STATUS = {"hold": 409, "skip": 409, "reject": 403}

_CLAIM_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"model": ClaimRefusedOut, "description": "hold (a limit is full) or skip."},
    403: {
        "model": ClaimRefusedOut,
        "description": "reject (never runs), or the machine is not approved.",
    },
}


@router.post("/claims", response_model=ClaimOut, responses=_CLAIM_RESPONSES)
def claim(
    body: ClaimIn,
    machine: CurrentMachine,
    session: SessionDep,
    gateway: GatewayDep,
    settings: SettingsDep,
) -> ClaimOut | JSONResponse:
    result = claims.claim(session, gateway, machine, body.flow_run_id, running=body.running)
    if result.decision == "run":
        assert result.job_id and result.memory_mb and result.max_runtime_s
        job = session.get(Job, result.job_id)
        org = session.get(Organization, machine.org_id)
        assert job is not None and org is not None
        # A fresh token per claim (a repeated claim gets its own), scoped to this job:
        # the flow's identity towards its inputs, outputs and record. The job's end
        # revokes it; it expires at the runtime limit plus CSHARE_JOB_TOKEN_GRACE_S.
        job_token = job_tokens.issue_job_token(session, job, grace_s=settings.job_token_grace_s)
        session.commit()
        return ClaimOut(
            flow_run_id=result.flow_run_id,
            job_id=result.job_id,
            org=org.slug,
            machine_type=result.machine_type or machine.machine_type,
            user=result.user,
            limits=LimitsOut(memory_mb=result.memory_mb, max_runtime_s=result.max_runtime_s),
            job_token=job_token,
            inputs=len(job.inputs or []),
            code=dict(job.code) if job.code else None,
            container=containers.container_spec(job),
        )
    return JSONResponse(
        error_body(
            f"claim_{result.decision}",
            result.reason,
            decision=result.decision,
            rule=result.rule,
            flow_run_id=str(result.flow_run_id),
        ),
        status_code=_REFUSED_STATUS[result.decision],
    )


class LimitReportIn(BaseModel):
    limit: Literal["memory", "runtime"]
    message: str = Field(max_length=2000, description="What the run's Prefect state says.")


class UsageReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wall_s: float = Field(ge=0, le=10**8, description="From the process's start to its end.")
    cpu_s: float | None = Field(None, ge=0, le=10**9, description="User + system CPU.")
    max_rss_mb: float | None = Field(None, ge=0, le=10**8, description="Peak memory.")


@router.post("/runs/{flow_run_id}/usage", status_code=status.HTTP_204_NO_CONTENT)
def report_usage(
    flow_run_id: Annotated[uuid.UUID, Path()],
    body: UsageReportIn,
    machine: CurrentMachine,
    session: SessionDep,
) -> None:
    """What the run used on this machine, for the job's lineage (`cshare lineage`)."""
    claims.report_usage(session, machine, flow_run_id, body.model_dump(exclude_none=True))


@router.post("/runs/{flow_run_id}/limit", status_code=status.HTTP_204_NO_CONTENT)
def report_limit(
    flow_run_id: Annotated[uuid.UUID, Path()],
    body: LimitReportIn,
    machine: CurrentMachine,
    session: SessionDep,
) -> None:
    """The agent stopped this run at a limit: the job ends `failed` naming it."""
    claims.report_limit(session, machine, flow_run_id, limit=body.limit, message=body.message)
