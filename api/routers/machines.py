"""Machines of an organization: register (agent), list, show, approve, reject, remove."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, status
from pydantic import BaseModel, Field

from api.deps import Requires, SessionDep
from api.routers.deployments import GatewayDep
from api.schemas import Page, PublicUserOut
from flows import claims
from flows.gateway import work_pool_name
from orgs import machines
from orgs.context import OrgContext
from orgs.machines import Health, MachineStatus, MachineView
from policies.permissions import Permission

router = APIRouter(tags=["machines"])

MachinesView = Annotated[OrgContext, Depends(Requires(Permission.machines_view))]
MachinesRegister = Annotated[OrgContext, Depends(Requires(Permission.machines_register))]
MachinesApprove = Annotated[OrgContext, Depends(Requires(Permission.machines_approve))]
# Every member may remove their own machines; the service asks for machines_manage_all
# when the machine is someone else's.
MachinesManage = Annotated[OrgContext, Depends(Requires(Permission.machines_manage_own))]
MachineId = Annotated[uuid.UUID, Path(alias="id", description="The machine's id.")]


class MachineIn(BaseModel):
    name: str = Field(max_length=64, description="Unique in the organization; e.g. the host name.")
    machine_type: str = Field(
        max_length=32, description="One of the organization's machine types (limits document)."
    )
    hardware: dict[str, Any] = Field(
        default_factory=dict, description="What the agent detected: CPUs, memory, GPUs, OS."
    )
    slots: int = Field(1, ge=1, le=machines.MAX_SLOTS, description="Jobs it runs at once.")


class RejectIn(BaseModel):
    reason: str = Field("", max_length=machines.MAX_REASON_CHARS, description="Told to its agent.")


class MachineOut(BaseModel):
    id: uuid.UUID
    name: str
    machine_type: str
    status: MachineStatus = Field(description="pending, approved or rejected (by an admin).")
    status_reason: str = Field(description="Why it was rejected, if it was.")
    health: Health = Field(
        description="online while its agent heartbeats within machines.offline_after_s."
    )
    owner: PublicUserOut
    slots: int
    running_jobs: int = Field(description="Runs its agent reported (0 when offline).")
    free_slots: int = Field(description="Slots that could take a job now (approved and online).")
    idle: bool = Field(description="Online and running nothing.")
    hardware: dict[str, Any]
    docker: str = Field(
        description="`yes (engine X)` when its agent reaches a Docker engine (container "
        "jobs run only there), else `no`."
    )
    work_pool: str = Field(description="The Prefect work pool its agent polls.")
    created_at: datetime
    decided_at: datetime | None
    last_heartbeat_at: datetime | None
    last_job_at: datetime | None


class NewMachineOut(BaseModel):
    machine: MachineOut
    machine_token: str = Field(description="The agent's secret. Shown once; the agent stores it.")


def machine_out(org_slug: str, v: MachineView) -> MachineOut:
    m = v.machine
    return MachineOut(
        id=m.id,
        name=m.name,
        machine_type=m.machine_type,
        status=MachineStatus(m.status),
        status_reason=m.status_reason,
        health=v.health,
        owner=PublicUserOut(id=m.owner_id, name=v.owner_name),
        slots=m.slots,
        running_jobs=v.running,
        free_slots=v.free_slots,
        idle=v.idle,
        hardware=dict(m.hardware or {}),
        docker=machines.docker_summary(m.hardware or {}),
        work_pool=work_pool_name(org_slug, m.machine_type),
        created_at=m.created_at,
        decided_at=m.decided_at,
        last_heartbeat_at=m.last_heartbeat_at,
        last_job_at=m.last_job_at,
    )


@router.post("/orgs/{org}/machines", status_code=status.HTTP_201_CREATED)
def register_machine(body: MachineIn, ctx: MachinesRegister, session: SessionDep) -> NewMachineOut:
    """Register the caller's machine (what `cshare agent start` does)."""
    issued = machines.register(
        ctx,
        session,
        name=body.name,
        machine_type=body.machine_type,
        hardware=body.hardware,
        slots=body.slots,
    )
    view = machines.view(session, ctx.org, issued.record)
    return NewMachineOut(machine=machine_out(ctx.org.slug, view), machine_token=issued.token)


@router.get("/orgs/{org}/machines")
def list_machines(
    ctx: MachinesView,
    session: SessionDep,
    status_: Annotated[MachineStatus | None, Query(alias="status")] = None,
    machine_type: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page[MachineOut]:
    rows, total = machines.list_machines(
        session, ctx, status=status_, machine_type=machine_type, limit=limit, offset=offset
    )
    items = [machine_out(ctx.org.slug, v) for v in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.get("/orgs/{org}/machines/{id}")
def show_machine(machine_id: MachineId, ctx: MachinesView, session: SessionDep) -> MachineOut:
    machine = machines.get(session, ctx, machine_id)
    return machine_out(ctx.org.slug, machines.view(session, ctx.org, machine))


@router.post("/orgs/{org}/machines/{id}/approve")
def approve_machine(machine_id: MachineId, ctx: MachinesApprove, session: SessionDep) -> MachineOut:
    machine = machines.approve(ctx, session, machine_id)
    return machine_out(ctx.org.slug, machines.view(session, ctx.org, machine))


@router.post("/orgs/{org}/machines/{id}/reject")
def reject_machine(
    machine_id: MachineId,
    ctx: MachinesApprove,
    session: SessionDep,
    gateway: GatewayDep,
    body: Annotated[RejectIn | None, Body()] = None,
) -> MachineOut:
    """Refuse the machine: its agent stops and exits; runs on it are cancelled."""
    machine = machines.reject(ctx, session, machine_id, body.reason if body else "")
    claims.settle_revoked(session, gateway, machine.id)
    return machine_out(ctx.org.slug, machines.view(session, ctx.org, machine))


@router.delete("/orgs/{org}/machines/{id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_machine(
    machine_id: MachineId, ctx: MachinesManage, session: SessionDep, gateway: GatewayDep
) -> None:
    """Remove a machine (yours, or anyone's as an admin). Its token stops working."""
    machine = machines.remove(ctx, session, machine_id)
    claims.settle_revoked(session, gateway, machine.id)
