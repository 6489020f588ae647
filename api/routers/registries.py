"""Private Docker registries of an organization (admins), and a container job's login.

`GET/POST /orgs/{org}/registries`, `DELETE /orgs/{org}/registries/{id or prefix}`: no
route returns a password. `GET /orgs/{org}/jobs/{id}/registry-auth`: the login for that
job's image only, for the job's own token (the machine pulling it), never a member's.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Requires, SessionDep, SettingsDep
from api.job_credentials import JobOnly
from api.routers.datasets import JobId, job_in_org
from datasets.access import Caller
from flows import containers
from orgs import registries
from orgs.context import OrgContext
from policies import access
from policies.access import CredentialRule, JobFacts, JobTokenUse
from policies.permissions import Permission

router = APIRouter(tags=["registries"])

RegistriesManage = Annotated[OrgContext, Depends(Requires(Permission.registries_manage))]
JobRegistryAuth = Annotated[
    Caller,
    Depends(
        JobOnly(
            Permission.jobs_view_own,
            use=JobTokenUse.registry_auth,
            rule=CredentialRule.registry_auth_job_only,
        )
    ),
]


class RegistryIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    registry: str = Field(max_length=300, description="HOST[:PORT][/NAMESPACE]")
    username: str = Field(max_length=255)
    # Checked by the service (empty, too large); never echoed.
    password: str


class RegistryOut(BaseModel):
    id: uuid.UUID
    registry: str
    username: str
    created_at: datetime
    updated_at: datetime


class RegistryAuthOut(BaseModel):
    image: str
    registry: str = Field(description="The host to log in to.")
    anonymous: bool = Field(description="No org registry covers the image: pull without login.")
    username: str | None = None
    password: str | None = None


def _out(info: registries.RegistryInfo) -> RegistryOut:
    return RegistryOut(
        id=info.id,
        registry=info.prefix,
        username=info.username,
        created_at=info.created_at,
        updated_at=info.updated_at,
    )


@router.get("/orgs/{org}/registries")
def list_registries(ctx: RegistriesManage, session: SessionDep) -> list[RegistryOut]:
    """The org's registries and usernames; never a password."""
    return [_out(r) for r in registries.list_registries(session, ctx.org.id)]


@router.post("/orgs/{org}/registries", status_code=status.HTTP_201_CREATED)
def add_registry(
    ctx: RegistriesManage,
    body: RegistryIn,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
) -> RegistryOut:
    """Add a registry (or replace the login of one already added: 200)."""
    info, created = registries.add_registry(
        ctx, session, body.registry, body.username, body.password, settings=settings
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return _out(info)


@router.delete("/orgs/{org}/registries/{key:path}", status_code=status.HTTP_204_NO_CONTENT)
def remove_registry(
    ctx: RegistriesManage,
    session: SessionDep,
    key: Annotated[str, Path(max_length=300, description="The registry's id or HOST[/NS].")],
) -> Response:
    registries.remove_registry(ctx, session, key)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/orgs/{org}/jobs/{id}/registry-auth")
def registry_auth(
    job_id: JobId, caller: JobRegistryAuth, session: SessionDep, settings: SettingsDep
) -> RegistryAuthOut:
    """The login for this container job's image (the most specific org registry), for the
    job's own token only; `anonymous` when no registry of the org covers it."""
    job = job_in_org(session, caller, job_id)
    access.require_rule(
        access.can_write_lineage(caller.viewer, JobFacts.of(job)),
        CredentialRule.registry_auth_job_only,
    )
    image = containers.image_ref(job)
    credential = registries.credential_for(session, job.org_id, image, settings=settings)
    if credential is None:
        host, _ = registries.image_path(image)
        return RegistryAuthOut(image=image, registry=host, anonymous=True)
    return RegistryAuthOut(
        image=image,
        registry=credential.registry,
        anonymous=False,
        username=credential.username,
        password=credential.password,
    )
