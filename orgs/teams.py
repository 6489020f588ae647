"""Teams: named groups of an organization's members.

Admins and owners create, rename and delete teams and choose their members (who must
be members of the organization; removing someone from the organization removes them
from its teams in the same transaction, `drop_member_teams`). Members see the teams
they are in. Projects may be visible to chosen teams only (policies.visibility), and a
team may carry limits on top of each member's own (policies.admission `team_*` rules).
Every change is audited.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orgs import audit
from orgs.context import OrgContext
from orgs.models import Membership, Organization, Team, TeamMember, User
from policies.errors import Conflict, Invalid, NotFound
from policies.names import refuse_bidi
from policies.permissions import Permission

__all__ = [
    "add_member",
    "create_team",
    "delete_team",
    "drop_member_teams",
    "get_team",
    "list_teams",
    "remove_member",
    "team_members",
    "update_team",
    "user_team_ids",
]

NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_DESCRIPTION: Final = 2000
MAX_MACHINE_TYPES: Final = 50
_UNSET: Final[Any] = object()


def validate_name(name: str) -> str:
    refuse_bidi(name, field="name")
    if not NAME_RE.fullmatch(name):
        raise Invalid(
            "Team names are 1-63 lowercase letters, digits, '-' or '_', starting with a "
            "letter or digit.",
            field="name",
        )
    return name


def _validate_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION:
        raise Invalid(
            f"Descriptions may have at most {MAX_DESCRIPTION} characters.", field="description"
        )
    return description


def _validate_max_jobs(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= 1_000_000:
        raise Invalid(
            "max_concurrent_jobs is a whole number from 0 to 1000000 (or null: no team limit).",
            field="max_concurrent_jobs",
        )
    return value


def _validate_machine_types(value: Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if len(value) > MAX_MACHINE_TYPES:
        raise Invalid(
            f"A team allows at most {MAX_MACHINE_TYPES} machine types.", field="machine_types"
        )
    out: list[str] = []
    for item in value:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", item):
            raise Invalid(
                f"'{item[:40]}' is not a machine type name (lowercase letters, digits, '-', "
                "'_'; at most 32).",
                field="machine_types",
            )
        if item not in out:
            out.append(item)
    return out


def snapshot(team: Team) -> dict[str, Any]:
    return {
        "name": team.name,
        "description": team.description,
        "max_concurrent_jobs": team.max_concurrent_jobs,
        "machine_types": team.machine_types,
    }


def _not_found(name: str) -> NotFound:
    return NotFound(f"No team '{name}' in this organization.", code="team_not_found")


# ------------------------------------------------------------------------ reads


def user_team_ids(session: Session, org_id: uuid.UUID, user_id: uuid.UUID) -> list[uuid.UUID]:
    return list(
        session.scalars(
            select(Team.id)
            .join(TeamMember, TeamMember.team_id == Team.id)
            .where(Team.org_id == org_id, TeamMember.user_id == user_id)
        )
    )


def list_teams(ctx: OrgContext, session: Session) -> list[tuple[Team, int]]:
    """Teams by name with their member counts: every team for admins, the caller's own
    for members."""
    ctx.require(Permission.teams_view)
    counts = (
        select(TeamMember.team_id, func.count().label("n")).group_by(TeamMember.team_id).subquery()
    )
    stmt = (
        select(Team, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.team_id == Team.id)
        .where(Team.org_id == ctx.org.id)
    )
    if not ctx.can(Permission.teams_manage):
        stmt = stmt.where(Team.id.in_(user_team_ids(session, ctx.org.id, ctx.user.id)))
    return [(team, int(n)) for team, n in session.execute(stmt.order_by(Team.name)).all()]


def find_team(session: Session, org: Organization, name: str) -> Team | None:
    return session.scalars(select(Team).where(Team.org_id == org.id, Team.name == name)).first()


def get_team(ctx: OrgContext, session: Session, name: str) -> Team:
    """A team the caller may see (admins: any; members: theirs), else 404."""
    ctx.require(Permission.teams_view)
    team = find_team(session, ctx.org, name)
    if team is None:
        raise _not_found(name)
    if not ctx.can(Permission.teams_manage) and team.id not in user_team_ids(
        session, ctx.org.id, ctx.user.id
    ):
        raise _not_found(name)
    return team


def teams_by_name(session: Session, org: Organization, names: Sequence[str]) -> list[Team]:
    """The org's teams called `names` (422 naming the first unknown one)."""
    found = {
        t.name: t
        for t in session.scalars(select(Team).where(Team.org_id == org.id, Team.name.in_(names)))
    }
    for name in names:
        if name not in found:
            raise Invalid(f"No team '{name}' in this organization.", field="teams")
    return [found[n] for n in dict.fromkeys(names)]


def team_members(session: Session, team: Team) -> list[User]:
    return list(
        session.scalars(
            select(User)
            .join(TeamMember, TeamMember.user_id == User.id)
            .where(TeamMember.team_id == team.id)
            .order_by(User.name)
        )
    )


# ----------------------------------------------------------------------- writes


def create_team(
    ctx: OrgContext,
    session: Session,
    *,
    name: str,
    description: str = "",
    max_concurrent_jobs: int | None = None,
    machine_types: Sequence[str] | None = None,
) -> Team:
    ctx.require(Permission.teams_manage)
    team = Team(
        org_id=ctx.org.id,
        name=validate_name(name),
        description=_validate_description(description),
        max_concurrent_jobs=_validate_max_jobs(max_concurrent_jobs),
        machine_types=_validate_machine_types(machine_types),
        created_by=ctx.user.id,
    )
    if find_team(session, ctx.org, name) is not None:
        raise Conflict(f"A team '{name}' already exists.", code="team_exists")
    session.add(team)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"A team '{name}' already exists.", code="team_exists") from None
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="team.created",
        target_type="team",
        target_id=team.id,
        after=snapshot(team),
    )
    session.commit()
    return team


def update_team(
    ctx: OrgContext,
    session: Session,
    name: str,
    *,
    new_name: str | None = None,
    description: str | None = None,
    max_concurrent_jobs: int | None = _UNSET,
    machine_types: Sequence[str] | None = _UNSET,
) -> Team:
    """Rename, describe, or change the limits (None removes a limit)."""
    ctx.require(Permission.teams_manage)
    team = get_team(ctx, session, name)
    before = snapshot(team)
    if new_name is not None and new_name != team.name:
        validate_name(new_name)
        if find_team(session, ctx.org, new_name) is not None:
            raise Conflict(f"A team '{new_name}' already exists.", code="team_exists")
        team.name = new_name
    if description is not None:
        team.description = _validate_description(description)
    if max_concurrent_jobs is not _UNSET:
        team.max_concurrent_jobs = _validate_max_jobs(max_concurrent_jobs)
    if machine_types is not _UNSET:
        team.machine_types = _validate_machine_types(machine_types)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"A team '{new_name}' already exists.", code="team_exists") from None
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="team.updated",
        target_type="team",
        target_id=team.id,
        before=before,
        after=snapshot(team),
    )
    session.commit()
    return team


def delete_team(ctx: OrgContext, session: Session, name: str) -> None:
    """Delete a team. Projects visible only to it become visible to their creator and
    admins only (nobody else gains sight of them)."""
    ctx.require(Permission.teams_manage)
    team = get_team(ctx, session, name)
    before = {**snapshot(team), "members": [u.name for u in team_members(session, team)]}
    session.execute(delete(TeamMember).where(TeamMember.team_id == team.id))
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="team.deleted",
        target_type="team",
        target_id=team.id,
        before=before,
    )
    session.delete(team)
    session.commit()


def _org_member(session: Session, org: Organization, user: str) -> User:
    """The org's member named by user name or id (422 for anyone else: teams hold only
    members)."""
    stmt = select(User).join(Membership, Membership.user_id == User.id)
    stmt = stmt.where(Membership.org_id == org.id)
    try:
        stmt = stmt.where(User.id == uuid.UUID(user))
    except ValueError:
        stmt = stmt.where(User.name == user)
    found = session.scalars(stmt).first()
    if found is None:
        raise Invalid(
            f"'{user[:64]}' is not a member of this organization; only members join teams.",
            field="user",
            code="not_a_member",
        )
    return found


def add_member(ctx: OrgContext, session: Session, name: str, user: str) -> User:
    ctx.require(Permission.teams_manage)
    team = get_team(ctx, session, name)
    member = _org_member(session, ctx.org, user)
    if session.get(TeamMember, (team.id, member.id)) is not None:
        return member  # already in: adding again changes nothing
    session.add(TeamMember(team_id=team.id, user_id=member.id))
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="team.member_added",
        target_type="team",
        target_id=team.id,
        after={"team": team.name, "user_id": str(member.id), "user": member.name},
    )
    try:
        session.commit()
    except IntegrityError:  # added by a concurrent request
        session.rollback()
    return member


def remove_member(ctx: OrgContext, session: Session, name: str, user: str) -> None:
    ctx.require(Permission.teams_manage)
    team = get_team(ctx, session, name)
    stmt = select(User).join(TeamMember, TeamMember.user_id == User.id)
    stmt = stmt.where(TeamMember.team_id == team.id)
    try:
        stmt = stmt.where(User.id == uuid.UUID(user))
    except ValueError:
        stmt = stmt.where(User.name == user)
    member = session.scalars(stmt).first()
    if member is None:
        raise NotFound(f"'{user[:64]}' is not in team '{name}'.", code="team_member_not_found")
    session.execute(
        delete(TeamMember).where(TeamMember.team_id == team.id, TeamMember.user_id == member.id)
    )
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="team.member_removed",
        target_type="team",
        target_id=team.id,
        before={"team": team.name, "user_id": str(member.id), "user": member.name},
    )
    session.commit()


def drop_member_teams(session: Session, org: Organization, user_id: uuid.UUID) -> None:
    """`orgs.cascade` hook: someone leaving the organization leaves its teams."""
    ids = select(Team.id).where(Team.org_id == org.id).scalar_subquery()
    session.execute(
        delete(TeamMember).where(TeamMember.user_id == user_id, TeamMember.team_id.in_(ids))
    )


def drop_org_teams(session: Session, org: Organization) -> None:
    """`orgs.cascade` hook: the organization's teams go with it (SQLite may run without
    foreign keys enforced)."""
    ids = select(Team.id).where(Team.org_id == org.id).scalar_subquery()
    session.execute(delete(TeamMember).where(TeamMember.team_id.in_(ids)))
    session.execute(delete(Team).where(Team.org_id == org.id))
