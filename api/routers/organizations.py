"""Organizations and members: /orgs, /orgs/{org}, leave, transfer, members."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, Field

from api.deps import CurrentUser, Requires, SessionDep
from api.schemas import Out, Page, PublicUserOut
from orgs import logos, organizations, two_factor
from orgs.context import OrgContext, member_context
from policies.permissions import Permission, Role

router = APIRouter(tags=["organizations"])

OrgView = Annotated[OrgContext, Depends(Requires(Permission.org_view))]
OrgUpdate = Annotated[OrgContext, Depends(Requires(Permission.org_update))]
OrgDelete = Annotated[OrgContext, Depends(Requires(Permission.org_delete))]
OrgLeave = Annotated[OrgContext, Depends(Requires(Permission.org_leave))]
OrgTransfer = Annotated[OrgContext, Depends(Requires(Permission.org_transfer))]
MembersView = Annotated[OrgContext, Depends(Requires(Permission.members_view))]
MembersManage = Annotated[OrgContext, Depends(Requires(Permission.members_manage))]


class OrgIn(BaseModel):
    name: str = Field(max_length=100)
    slug: str | None = Field(default=None, max_length=40)
    description: str | None = Field(default=None, max_length=2000)


class OrgPatch(BaseModel):
    name: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=2000)
    contact_email: str | None = Field(
        default=None, max_length=320, description="Where to reach the admins; null or '' clears."
    )


class OrgOut(Out):
    id: uuid.UUID
    slug: str
    name: str
    description: str
    created_at: datetime
    contact_email: str | None = None
    role: Role | None = None


class DeleteIn(BaseModel):
    confirm: str = Field(max_length=100, description="The organization's exact name.")


class TransferIn(BaseModel):
    user_id: uuid.UUID


class MemberOut(BaseModel):
    user: PublicUserOut
    role: Role
    joined_at: datetime
    two_factor: bool | None = Field(
        default=None,
        description="Whether the member has two-factor on; only for those who may manage "
        "members (null otherwise).",
    )


class RoleIn(BaseModel):
    role: Role


def _org_out(ctx: OrgContext) -> OrgOut:
    return OrgOut.model_validate(ctx.org).model_copy(update={"role": ctx.role})


@router.post("/orgs", status_code=status.HTTP_201_CREATED)
def create_org(body: OrgIn, user: CurrentUser, session: SessionDep) -> OrgOut:
    org = organizations.create(
        session, user, name=body.name, slug=body.slug, description=body.description
    )
    return OrgOut.model_validate(org).model_copy(update={"role": Role.owner})


@router.get("/orgs")
def list_orgs(user: CurrentUser, session: SessionDep) -> Page[OrgOut]:
    rows = organizations.list_mine(session, user)
    items = [OrgOut.model_validate(o).model_copy(update={"role": Role(r)}) for o, r in rows]
    return Page(items=items, total=len(items), limit=len(items), offset=0)


@router.get("/orgs/{org}")
def show_org(ctx: OrgView) -> OrgOut:
    return _org_out(ctx)


@router.patch("/orgs/{org}")
def update_org(body: OrgPatch, ctx: OrgUpdate, session: SessionDep) -> OrgOut:
    if "contact_email" in body.model_fields_set:
        logos.set_contact_email(ctx, session, body.contact_email)
    organizations.update(ctx, session, name=body.name, description=body.description)
    return _org_out(ctx)


@router.delete("/orgs/{org}", status_code=status.HTTP_204_NO_CONTENT)
def delete_org(body: DeleteIn, ctx: OrgDelete, session: SessionDep) -> None:
    organizations.delete(ctx, session, confirm=body.confirm)


@router.post("/orgs/{org}/leave", status_code=status.HTTP_204_NO_CONTENT)
def leave_org(ctx: OrgLeave, session: SessionDep) -> None:
    organizations.leave(ctx, session)


@router.post("/orgs/{org}/transfer-ownership")
def transfer_ownership(body: TransferIn, ctx: OrgTransfer, session: SessionDep) -> OrgOut:
    organizations.transfer_ownership(ctx, session, user_id=body.user_id)
    return _org_out(member_context(session, ctx.org.slug, ctx.user))


@router.get("/orgs/{org}/members")
def list_members(
    ctx: MembersView,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page[MemberOut]:
    rows, total = organizations.list_members(session, ctx.org, limit=limit, offset=offset)
    # Admins see who has two-factor (to act before or after requiring it); members not.
    enrolled = (
        two_factor.enrolled_among(session, (m.user_id for m in rows))
        if ctx.can(Permission.members_manage)
        else None
    )
    # One validation of the whole page in pydantic's core, not two models built per row.
    items = [
        {
            "user": {"id": m.user_id, "name": m.name},
            "role": m.role,
            "joined_at": m.joined_at,
            "two_factor": None if enrolled is None else m.user_id in enrolled,
        }
        for m in rows
    ]
    page = {"items": items, "total": total, "limit": limit, "offset": offset}
    return Page[MemberOut].model_validate(page)


@router.patch("/orgs/{org}/members/{user_id}")
def change_role(
    user_id: uuid.UUID, body: RoleIn, ctx: MembersManage, session: SessionDep
) -> MemberOut:
    m = organizations.change_role(ctx, session, user_id=user_id, role=body.role)
    return MemberOut(
        user=PublicUserOut(id=m.user.id, name=m.user.name),
        role=Role(m.role),
        joined_at=m.created_at,
    )


@router.delete("/orgs/{org}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_member(
    user_id: uuid.UUID,
    ctx: MembersManage,
    session: SessionDep,
    no_rejoin: Annotated[
        bool, Query(description="Also refuse their requests to rejoin (they may be invited).")
    ] = False,
) -> None:
    organizations.remove_member(ctx, session, user_id=user_id, no_rejoin=no_rejoin)
