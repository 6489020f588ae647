"""Deployments of an organization: GET/POST /orgs/{org}/deployments, GET/DELETE .../{name}."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Requires, SessionDep, SettingsDep
from flows import deployments, projects, schedules
from flows.gateway import PrefectGateway, work_pool_name
from flows.models import Deployment
from orgs.context import OrgContext
from policies.errors import Invalid
from policies.permissions import Permission

router = APIRouter(tags=["deployments"])


async def get_gateway(request: Request) -> PrefectGateway:
    """The app's one Prefect gateway (built from settings in `create_app`)."""
    gateway: PrefectGateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[PrefectGateway, Depends(get_gateway)]

DeploymentsView = Annotated[OrgContext, Depends(Requires(Permission.deployments_view))]
DeploymentsRegister = Annotated[OrgContext, Depends(Requires(Permission.deployments_register))]
NamePath = Annotated[str, Path(max_length=64)]


class DeclaredScheduleIn(BaseModel):
    """A prefect.yaml schedule: one of `cron`, `interval_s` or `rrule`."""

    cron: str | None = Field(None, max_length=128)
    interval_s: float | None = None
    anchor_date: datetime | None = None
    rrule: str | None = Field(None, max_length=4000)
    timezone: str = Field("UTC", max_length=64)
    active: bool = True
    parameters: dict[str, Any] = Field(default_factory=dict)

    def declared(self) -> schedules.DeclaredSchedule:
        kind = "interval" if self.interval_s is not None else "rrule" if self.rrule else "cron"
        spec = schedules.validate_spec(
            kind=kind,
            cron=self.cron,
            interval_s=self.interval_s,
            anchor_date=self.anchor_date,
            rrule=self.rrule,
            timezone=self.timezone,
        )
        return schedules.DeclaredSchedule(spec, dict(self.parameters), self.active)


class CodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["bundle"] = "bundle"
    digest: str = Field(max_length=80, examples=["sha256:" + "0" * 64])


class GitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repository: str = Field(
        max_length=1024, examples=["https://github.com/team/vision.git"], description="Its URL."
    )
    ref: str = Field(max_length=255, examples=["main"], description="Branch, tag or commit.")
    track: bool = Field(
        False,
        description="Re-resolve the branch at each submission (the job records the commit); "
        "default: every job runs the commit resolved now.",
    )


class DeploymentIn(BaseModel):
    name: str = Field(max_length=64, examples=["train"])
    entrypoint: str = Field(
        max_length=512,
        description="'path/to/file.py:flow' (relative to `path` on the machines) or "
        "'package.module:flow'.",
        examples=["flows/library/train.py:train"],
    )
    machine_type: str = Field("cpu", max_length=32)
    project: str | None = Field(
        None,
        max_length=64,
        description="The project to register it in (default: the one it is in, else the "
        "org's 'default' project).",
    )
    path: str | None = Field(
        None, max_length=1024, description="Working directory of the code on the machines."
    )
    flow_name: str | None = Field(None, max_length=128)
    description: str = Field("", max_length=2000)
    tags: list[str] = Field(default_factory=list, max_length=50)
    parameters: dict[str, Any] = Field(default_factory=dict, description="Defaults.")
    parameter_schema: dict[str, Any] = Field(
        default_factory=dict, description="The flow's parameter JSON schema (as Prefect makes it)."
    )
    job_variables: dict[str, Any] = Field(default_factory=dict)
    pull_steps: list[dict[str, Any]] | None = Field(
        None, max_length=20, description="Prefect pull steps (default: the machine's checkout)."
    )
    concurrency_limit: int | None = Field(
        None, description="At most this many of its jobs run at once (enforced by admission)."
    )
    collision_strategy: Literal["enqueue", "cancel_new"] = Field(
        "enqueue", description="Beyond the limit a job is held (enqueue) or rejected."
    )
    version: str | None = Field(None, max_length=128)
    schedules: list[DeclaredScheduleIn] | None = Field(
        None,
        max_length=50,
        description="The deployment's prefect.yaml schedules: they replace those of the "
        "previous deploy (schedules made with `cshare schedule create` stay). Absent: "
        "unchanged.",
    )
    code: CodeIn | None = Field(
        None,
        description="The code its jobs run: a bundle uploaded with PUT "
        "/orgs/{org}/bundles/{digest} (`cshare deploy` does both). Null: the code is on "
        "the machines already (`path`, pull steps).",
    )
    git: GitIn | None = Field(
        None,
        description="The code its jobs run comes from this Git repository: the ref is "
        "resolved to a commit now (with the project's deploy key or token) and pinned. "
        "Not with `code`.",
    )


class DeploymentOut(BaseModel):
    id: uuid.UUID
    name: str
    flow_name: str
    entrypoint: str
    path: str | None
    machine_type: str
    project: str | None
    description: str
    tags: list[str]
    parameters: dict[str, Any]
    parameter_schema: dict[str, Any]
    job_variables: dict[str, Any]
    concurrency_limit: int | None
    collision_strategy: str
    schedules: list[str] | None = Field(
        None, description="Ids of its prefect.yaml schedules, when this call set them."
    )
    work_pool: str
    prefect_name: str
    prefect_deployment_id: uuid.UUID | None
    code: dict[str, Any] | None = Field(
        description="{kind: bundle, digest, size, files} or {kind: git, repository, ref, "
        "commit, track}; null: the machines' own copy."
    )
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class DeploymentList(BaseModel):
    items: list[DeploymentOut]
    total: int


def deployment_out(dep: Deployment, org_slug: str) -> DeploymentOut:
    return DeploymentOut(
        id=dep.id,
        name=dep.name,
        flow_name=dep.flow_name,
        entrypoint=dep.entrypoint,
        path=dep.path,
        machine_type=dep.machine_type,
        project=dep.project.name if dep.project is not None else None,
        description=dep.description,
        tags=list(dep.tags or []),
        parameters=dict(dep.parameters or {}),
        parameter_schema=dict(dep.parameter_schema or {}),
        job_variables=dict(dep.job_variables or {}),
        concurrency_limit=dep.concurrency_limit,
        collision_strategy=dep.collision_strategy,
        work_pool=work_pool_name(org_slug, dep.machine_type),
        prefect_name=f"{dep.flow_name}/{deployments.prefect_deployment_name(org_slug, dep.name)}",
        prefect_deployment_id=dep.prefect_deployment_id,
        code=dict(dep.code) if dep.code else None,
        created_by=dep.created_by,
        created_at=dep.created_at,
        updated_at=dep.updated_at,
    )


def _code_of(body: DeploymentIn) -> dict[str, Any] | None:
    if body.git is not None:
        if body.code is not None:
            raise Invalid("Give either `code` (a bundle) or `git`, not both.", field="git")
        return {"kind": "git", **body.git.model_dump()}
    return body.code.model_dump() if body.code is not None else None


@router.get("/orgs/{org}/deployments")
def list_deployments(
    ctx: DeploymentsView,
    session: SessionDep,
    project: Annotated[str | None, Query(max_length=64, description="Only this project's.")] = None,
) -> DeploymentList:
    in_project = (
        projects.get_project(session, ctx.org, project, viewer=ctx.viewer) if project else None
    )
    found = deployments.list_deployments(session, ctx.org, viewer=ctx.viewer, project=in_project)
    items = [deployment_out(d, ctx.org.slug) for d in found]
    return DeploymentList(items=items, total=len(items))


@router.post(
    "/orgs/{org}/deployments",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "An existing deployment was updated."}},
)
def register_deployment(
    body: DeploymentIn,
    ctx: DeploymentsRegister,
    session: SessionDep,
    gateway: GatewayDep,
    settings: SettingsDep,
    response: Response,
) -> DeploymentOut:
    """Register a flow entrypoint as a deployment of the org (or update yours)."""
    spec = deployments.DeploymentSpec(
        name=body.name,
        entrypoint=body.entrypoint,
        machine_type=body.machine_type,
        path=body.path,
        flow_name=body.flow_name,
        description=body.description,
        tags=body.tags,
        parameters=body.parameters,
        parameter_schema=body.parameter_schema,
        job_variables=body.job_variables,
        pull_steps=body.pull_steps,
        concurrency_limit=body.concurrency_limit,
        collision_strategy=body.collision_strategy,
        version=body.version,
        code=_code_of(body),
    )
    # Schedules are checked before anything is registered: a bad one changes nothing.
    declared = None
    if body.schedules is not None:
        declared = []
        for i, item in enumerate(body.schedules):
            try:
                declared.append(item.declared())
            except Invalid as exc:
                raise Invalid(
                    f"Schedule #{i + 1}: {exc.detail}", field=f"schedules.{i}.{exc.field}"
                ) from None
        schedules.check_declared(body.parameter_schema, body.parameters, declared, body.name)
    project = projects.resolve_for_deployment(ctx, session, body.project, deployment=body.name)
    dep, created = deployments.register(
        ctx,
        session,
        gateway,
        spec,
        project=project,
        pool_type=settings.work_pool_type,
        schedules_backend=settings.schedules_backend,
        settings=settings,
    )
    synced = None
    if declared is not None:
        synced = schedules.sync_declared(
            ctx, session, gateway, dep, declared, backend=settings.schedules_backend
        )
        dep = deployments.get_deployment(session, ctx.org, body.name, viewer=ctx.viewer)
    if not created:
        response.status_code = status.HTTP_200_OK
    out = deployment_out(dep, ctx.org.slug)
    if synced is not None:
        out.schedules = [str(sched.id) for sched in synced]
    return out


@router.get("/orgs/{org}/deployments/{name}")
def get_deployment(name: NamePath, ctx: DeploymentsView, session: SessionDep) -> DeploymentOut:
    return deployment_out(
        deployments.get_deployment(session, ctx.org, name, viewer=ctx.viewer), ctx.org.slug
    )


@router.delete("/orgs/{org}/deployments/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_deployment(
    name: NamePath, ctx: DeploymentsRegister, session: SessionDep, gateway: GatewayDep
) -> None:
    """Delete a deployment (its creator, or an admin). Refused while jobs of it run."""
    deployments.delete_deployment(ctx, session, gateway, name)
