"""Org secrets (admins): PUT/GET/DELETE /orgs/{org}/secrets. Write-only: no route returns
a value, only names and when and by whom each was last set."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import BaseModel, ConfigDict

from api.deps import Requires, SessionDep, SettingsDep
from api.schemas import Page, PublicUserOut
from orgs import secrets
from orgs.context import OrgContext
from policies.permissions import Permission

router = APIRouter(tags=["secrets"])

SecretsManage = Annotated[OrgContext, Depends(Requires(Permission.secrets_manage))]


class SecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # Checked by the service (empty, over 64 KiB), whose messages never quote it.
    value: str


class SecretOut(BaseModel):
    name: str
    created_at: datetime
    updated_at: datetime
    updated_by: PublicUserOut | None


def _out(info: secrets.SecretInfo) -> SecretOut:
    author = (
        PublicUserOut(id=info.updated_by_id, name=info.updated_by_name)
        if info.updated_by_id is not None and info.updated_by_name is not None
        else None
    )
    return SecretOut(
        name=info.name,
        created_at=info.created_at,
        updated_at=info.updated_at,
        updated_by=author,
    )


@router.put("/orgs/{org}/secrets/{name}")
def set_secret(
    ctx: SecretsManage, name: str, body: SecretIn, session: SessionDep, settings: SettingsDep
) -> SecretOut:
    """Create or replace a secret. The answer never carries the value."""
    info = secrets.set_secret(ctx, session, name, body.value, settings=settings)
    return _out(info)


@router.get("/orgs/{org}/secrets")
def list_secrets(
    ctx: SecretsManage,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page[SecretOut]:
    """The secrets' names and who set them when; never their values."""
    rows, total = secrets.list_secrets(session, ctx.org.id, limit=limit, offset=offset)
    return Page(items=[_out(r) for r in rows], total=total, limit=limit, offset=offset)


@router.delete("/orgs/{org}/secrets/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_secret(ctx: SecretsManage, name: str, session: SessionDep) -> Response:
    secrets.delete_secret(ctx, session, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
