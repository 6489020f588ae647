"""Invitations: create, list, revoke inside an organization; accept with the code."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, status
from pydantic import BaseModel, Field

from api.deps import CurrentUser, Requires, SessionDep, SettingsDep
from api.routers.organizations import OrgOut
from api.schemas import Page
from orgs import invitations
from orgs.config import Settings
from orgs.context import OrgContext
from orgs.models import Invitation
from policies.permissions import Permission, Role

router = APIRouter(tags=["invitations"])

# Members pass this guard too: the service applies the org's `who_may_invite` setting,
# and lists to members only the invitations they created. Revoking is for admins.
InvitationsCreate = Annotated[
    OrgContext, Depends(Requires(Permission.invitations_create_if_allowed))
]

InvitationsManage = Annotated[OrgContext, Depends(Requires(Permission.invitations_manage))]

Code = Annotated[str, Path(min_length=1, max_length=128, description="The invitation code.")]


class InvitationIn(BaseModel):
    role: Role = Role.member
    expires_in_hours: int | None = Field(
        default=None,
        ge=invitations.MIN_EXPIRY_HOURS,
        le=invitations.MAX_EXPIRY_HOURS,
        description="Default: the organization's invitations.default_expiry_hours "
        f"({invitations.DEFAULT_EXPIRY_HOURS} h = 7 days unless its admins changed it).",
    )
    max_uses: int | None = Field(
        default=None,
        ge=1,
        le=invitations.MAX_USES,
        description="null = unlimited. Left out: the organization's "
        f"invitations.default_max_uses ({invitations.DEFAULT_MAX_USES} unless its admins "
        "changed it): a link serves one person.",
    )


class InvitationOut(BaseModel):
    id: uuid.UUID
    prefix: str = Field(description="The code's first characters, to tell invitations apart.")
    role: Role
    state: invitations.InvitationState
    created_by: uuid.UUID | None
    created_at: datetime
    expires_at: datetime
    max_uses: int | None
    uses: int
    revoked_at: datetime | None


class NewInvitationOut(BaseModel):
    id: uuid.UUID
    code: str = Field(description="The secret. Shown once; share it or the link now.")
    link: str
    role: Role
    expires_at: datetime
    max_uses: int | None
    uses: int


class AcceptedOut(BaseModel):
    org: OrgOut
    role: Role


def _out(inv: Invitation) -> InvitationOut:
    return InvitationOut(
        id=inv.id,
        prefix=inv.prefix,
        role=Role(inv.role),
        state=invitations.state_of(inv),
        created_by=inv.created_by,
        created_at=inv.created_at,
        expires_at=inv.expires_at,
        max_uses=inv.max_uses,
        uses=inv.uses,
        revoked_at=inv.revoked_at,
    )


def invitation_link(settings: Settings, code: str) -> str:
    # The code is in the link by design: the link *is* the invitation, shown once to its
    # creator to pass on. Only the code's hash is stored.
    return f"{settings.public_url.rstrip('/')}/invitations/{code}"


@router.post("/orgs/{org}/invitations", status_code=status.HTTP_201_CREATED)
def create_invitation(
    body: InvitationIn, ctx: InvitationsCreate, session: SessionDep, settings: SettingsDep
) -> NewInvitationOut:
    issued = invitations.create(
        ctx,
        session,
        role=body.role,
        expires_in_hours=body.expires_in_hours,
        max_uses=body.max_uses if "max_uses" in body.model_fields_set else invitations.ORG_DEFAULT,
    )
    inv = issued.record
    return NewInvitationOut(
        id=inv.id,
        code=issued.code,
        link=invitation_link(settings, issued.code),
        role=Role(inv.role),
        expires_at=inv.expires_at,
        max_uses=inv.max_uses,
        uses=inv.uses,
    )


@router.get("/orgs/{org}/invitations")
def list_invitations(
    ctx: InvitationsCreate,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page[InvitationOut]:
    rows, total = invitations.list_for(ctx, session, limit=limit, offset=offset)
    return Page(items=[_out(i) for i in rows], total=total, limit=limit, offset=offset)


@router.delete("/orgs/{org}/invitations/{id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_invitation(
    invitation_id: Annotated[uuid.UUID, Path(alias="id")],
    ctx: InvitationsManage,
    session: SessionDep,
) -> None:
    invitations.revoke(ctx, session, invitation_id)


@router.post("/invitations/{code}/accept")
def accept_invitation(code: Code, user: CurrentUser, session: SessionDep) -> AcceptedOut:
    org, membership = invitations.accept(session, user, code)
    role = Role(membership.role)
    return AcceptedOut(org=OrgOut.model_validate(org).model_copy(update={"role": role}), role=role)
