"""Machine types of an organization and their elastic capacity (docs/elastic.md).

- `GET /orgs/{org}/machine-types` (members): the types of the limits document, each with
  its capacity provider and the machines the provider runs, if it has one;
- `GET /orgs/{org}/machine-types/{type}/scaling` (members);
- `PUT /orgs/{org}/machine-types/{type}/scaling` (admins): attach or change the provider;
- `DELETE /orgs/{org}/machine-types/{type}/scaling` (admins): detach it; its machines
  drain and stop.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Requires, SessionDep, SettingsDep
from orgs import capacity, settings_doc
from orgs.capacity import ProviderSpec, ProviderView
from orgs.context import OrgContext
from policies.limits import MACHINE_TYPE_PATTERN
from policies.permissions import Permission
from policies.scaling import DEFAULT_GRACE_S, DEFAULT_MAX_SCALE

router = APIRouter(tags=["machine types"])

TypesView = Annotated[OrgContext, Depends(Requires(Permission.overview_view))]
TypesManage = Annotated[OrgContext, Depends(Requires(Permission.settings_update))]
TypeName = Annotated[
    str, Path(alias="type", pattern=MACHINE_TYPE_PATTERN, description="A machine type's name.")
]


class ScalingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: Literal["process", "docker"] = Field(
        description="process: agents on the control plane's host; docker: agent containers."
    )
    min_scale: int = Field(0, ge=0, description="Machines kept running at all times.")
    max_scale: int = Field(DEFAULT_MAX_SCALE, ge=1, description="Machines at most.")
    grace_period_s: int = Field(
        DEFAULT_GRACE_S, ge=0, description="Seconds a machine stays idle before it stops."
    )
    slots: int = Field(1, ge=1, description="Jobs each machine runs at once.")
    engine_url: str | None = Field(None, max_length=500, description="docker: the engine.")
    image: str | None = Field(None, max_length=300, description="docker: the agent image.")
    network: str | None = Field(None, max_length=64, description="docker: default host.")
    flows_dir: str | None = Field(
        None, max_length=4096, description="process: where path deployments' code is."
    )


class ProvisionedOut(BaseModel):
    id: uuid.UUID
    name: str
    phase: str = Field(description="starting, ready or draining.")
    online: bool
    running_jobs: int
    started_at: datetime
    idle_since: datetime | None


class ScalingOut(BaseModel):
    machine_type: str
    provider: str
    min_scale: int
    max_scale: int
    grace_period_s: int
    slots: int
    engine_url: str | None = None
    image: str | None = None
    network: str | None = None
    flows_dir: str | None = None
    detached: bool = Field(description="Being removed: its machines drain and stop.")
    updated_at: datetime
    machines: list[ProvisionedOut]


class MachineTypeOut(BaseModel):
    name: str
    max_concurrent_jobs: int = Field(description="machine_types.<type>.max_scale (limits).")
    per_user_quota: int
    scaling: ScalingOut | None


class MachineTypesOut(BaseModel):
    items: list[MachineTypeOut]


def scaling_out(view: ProviderView) -> ScalingOut:
    p = view.provider
    return ScalingOut(
        machine_type=p.machine_type,
        provider=p.kind,
        min_scale=p.min_scale,
        max_scale=p.max_scale,
        grace_period_s=p.grace_period_s,
        slots=p.slots,
        engine_url=p.config.get("engine_url"),
        image=p.config.get("image"),
        network=p.config.get("network"),
        flows_dir=p.config.get("flows_dir"),
        detached=p.detached,
        updated_at=p.updated_at,
        machines=[
            ProvisionedOut(
                id=m.id,
                name=m.name,
                phase=m.phase,
                online=m.online,
                running_jobs=m.running_jobs,
                started_at=m.started_at,
                idle_since=m.idle_since,
            )
            for m in view.machines
        ],
    )


@router.get("/orgs/{org}/machine-types")
def list_machine_types(ctx: TypesView, session: SessionDep) -> MachineTypesOut:
    types = settings_doc.load(ctx.org.settings).limits.machine_types
    scaled = {v.provider.machine_type: v for v in capacity.list_views(session, ctx)}
    return MachineTypesOut(
        items=[
            MachineTypeOut(
                name=name,
                max_concurrent_jobs=caps.max_scale,
                per_user_quota=caps.per_user_quota,
                scaling=scaling_out(scaled[name]) if name in scaled else None,
            )
            for name, caps in sorted(types.items())
        ]
    )


@router.get("/orgs/{org}/machine-types/{type}/scaling")
def get_scaling(ctx: TypesView, session: SessionDep, machine_type: TypeName) -> ScalingOut:
    return scaling_out(capacity.get_view(session, ctx, machine_type))


@router.put("/orgs/{org}/machine-types/{type}/scaling")
def set_scaling(
    ctx: TypesManage,
    session: SessionDep,
    settings: SettingsDep,
    machine_type: TypeName,
    body: ScalingIn,
    response: Response,
) -> ScalingOut:
    """Attach a capacity provider to the type (201), or change it (200)."""
    spec = ProviderSpec(
        kind=body.provider,
        min_scale=body.min_scale,
        max_scale=body.max_scale,
        grace_period_s=body.grace_period_s,
        slots=body.slots,
        engine_url=body.engine_url,
        image=body.image,
        network=body.network,
        flows_dir=body.flows_dir,
    )
    _, created = capacity.configure(ctx, session, settings, machine_type, spec)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return scaling_out(capacity.get_view(session, ctx, machine_type))


@router.delete("/orgs/{org}/machine-types/{type}/scaling")
def remove_scaling(ctx: TypesManage, session: SessionDep, machine_type: TypeName) -> ScalingOut:
    """Detach the provider: its machines drain (running jobs end normally) and stop."""
    capacity.detach(ctx, session, machine_type)
    return scaling_out(capacity.get_view(session, ctx, machine_type))
