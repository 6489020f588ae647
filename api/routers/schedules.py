"""Recurring jobs: /orgs/{org}/schedules (cron, interval or rrule schedules on the org's
deployments)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, status
from pydantic import BaseModel, Field

from api.deps import Requires, SessionDep, SettingsDep
from api.routers.deployments import GatewayDep
from flows import schedules
from flows.models import Schedule
from orgs.context import OrgContext
from orgs.models import User
from policies.permissions import Permission

router = APIRouter(tags=["schedules"])

SchedulesView = Annotated[OrgContext, Depends(Requires(Permission.deployments_view))]
SchedulesManage = Annotated[OrgContext, Depends(Requires(Permission.schedules_manage_own))]
ScheduleId = Annotated[uuid.UUID, Path(alias="id", description="The schedule id.")]


class ScheduleIn(BaseModel):
    """One of `cron`, `interval_s` (with an optional `anchor_date`) or `rrule`."""

    deployment: str = Field(max_length=64)
    kind: Literal["cron", "interval", "rrule"] | None = Field(
        None, description="Default: the kind of the field given."
    )
    cron: str | None = Field(None, max_length=128, examples=["*/15 * * * *"])
    interval_s: float | None = Field(None, description="Seconds between runs (at least 60).")
    anchor_date: datetime | None = Field(
        None, description="When an interval schedule counts from (default 2020-01-01)."
    )
    rrule: str | None = Field(None, max_length=4000, examples=["FREQ=WEEKLY;BYDAY=MO;BYHOUR=9"])
    timezone: str = Field("UTC", max_length=64)
    parameters: dict[str, Any] = Field(default_factory=dict)
    active: bool = True

    def spec(self) -> schedules.ScheduleSpec:
        kind = self.kind or (
            "interval" if self.interval_s is not None else "rrule" if self.rrule else "cron"
        )
        return schedules.validate_spec(
            kind=kind,
            cron=self.cron,
            interval_s=self.interval_s,
            anchor_date=self.anchor_date,
            rrule=self.rrule,
            timezone=self.timezone,
        )


class SchedulePatch(BaseModel):
    active: bool


class ScheduleOut(BaseModel):
    id: uuid.UUID
    deployment: str
    kind: str
    cron: str
    interval_s: float | None
    anchor_date: datetime | None
    rrule: str | None
    declared: bool = Field(description="From a prefect.yaml: replaced by its next deploy.")
    timezone: str
    parameters: dict[str, Any]
    active: bool
    user: str | None
    user_id: uuid.UUID
    prefect_schedule_id: uuid.UUID | None
    created_at: datetime


class ScheduleList(BaseModel):
    items: list[ScheduleOut]
    total: int


def schedule_out(sched: Schedule, deployment: str, user: str | None) -> ScheduleOut:
    return ScheduleOut(
        id=sched.id,
        deployment=deployment,
        kind=sched.kind,
        cron=sched.cron,
        interval_s=sched.interval_s,
        anchor_date=sched.anchor_date,
        rrule=sched.rrule,
        declared=sched.declared,
        timezone=sched.timezone,
        parameters=dict(sched.parameters or {}),
        active=sched.active,
        user=user,
        user_id=sched.user_id,
        prefect_schedule_id=sched.prefect_schedule_id,
        created_at=sched.created_at,
    )


@router.post("/orgs/{org}/schedules", status_code=status.HTTP_201_CREATED)
def create_schedule(
    body: ScheduleIn,
    ctx: SchedulesManage,
    session: SessionDep,
    gateway: GatewayDep,
    settings: SettingsDep,
) -> ScheduleOut:
    """A schedule (cron, interval or rrule) on a deployment, run as you: each run is admitted like a
    submission of yours (held or rejected with a reason when a limit says so)."""
    sched, dep = schedules.create_schedule(
        ctx,
        session,
        gateway,
        deployment=body.deployment,
        spec=body.spec(),
        parameters=body.parameters,
        active=body.active,
        backend=settings.schedules_backend,
    )
    return schedule_out(sched, dep.name, ctx.user.name)


@router.get("/orgs/{org}/schedules")
def list_schedules(ctx: SchedulesView, session: SessionDep) -> ScheduleList:
    items = [schedule_out(s, d, u) for s, d, u in schedules.list_schedules(ctx, session)]
    return ScheduleList(items=items, total=len(items))


@router.patch("/orgs/{org}/schedules/{id}")
def update_schedule(
    schedule_id: ScheduleId,
    body: SchedulePatch,
    ctx: SchedulesManage,
    session: SessionDep,
    gateway: GatewayDep,
    settings: SettingsDep,
) -> ScheduleOut:
    """Pause (`active: false`) or resume a schedule: its creator, or an admin."""
    sched, dep = schedules.set_active(
        ctx, session, gateway, schedule_id, body.active, backend=settings.schedules_backend
    )
    owner = session.get(User, sched.user_id)
    return schedule_out(sched, dep.name, owner.name if owner is not None else None)


@router.delete("/orgs/{org}/schedules/{id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_schedule(
    schedule_id: ScheduleId, ctx: SchedulesManage, session: SessionDep, gateway: GatewayDep
) -> None:
    schedules.delete_schedule(ctx, session, gateway, schedule_id)
