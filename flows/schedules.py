"""Recurring jobs: cron schedules on an org's deployments, owned by a member.

Each schedule is also a Prefect deployment schedule (slug ``cshare-<id>``), so admins
see it on the deployment in the Prefect UI. Who turns it into runs is a setting
(``schedules_backend``):

- ``control-plane`` (default): the dispatcher fires it (``flows.dispatch.dispatcher``):
  every fire is a submission by the schedule's owner (same admission, held or rejected with
  a reason, never silently over a limit), keyed ``schedule:<id>:<time>`` so a fire
  happens once whatever the number of dispatchers. The Prefect schedule stays
  inactive, so Prefect's scheduler never doubles it. (Prefect 3.8.8's scheduler cannot
  insert runs under SQLAlchemy 2.1, which this stack installs.)
- ``prefect``: the Prefect schedule is active, Prefect's scheduler creates the runs
  and the dispatcher adopts each one shortly before it is due, attributed to the
  schedule's owner by the Prefect schedule id.

Prefect first, then our row: a schedule whose row never got written is found by the
dispatcher (its runs have no owner) and removed from Prefect.
"""

from __future__ import annotations

import importlib
import re
import uuid
import zoneinfo
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from flows.deployments import get_deployment, schedule_slug, validate_parameters
from flows.gateway import PrefectGateway
from flows.models import Deployment, Schedule
from orgs import audit
from orgs.context import OrgContext
from orgs.models import User
from policies.errors import Invalid, NotFound
from policies.permissions import Permission

__all__ = ["create_schedule", "delete_schedule", "get_schedule", "list_schedules", "set_active"]

# Five fields (minute hour day month weekday) or a nickname; croniter (Prefect's own,
# vendored) then checks the details, so both backends read an expression alike.
_CRON_FIELD: Final = r"[\d*/,\-A-Za-z?LW#]+"
CRON_RE: Final = re.compile(rf"^\s*(?:{_CRON_FIELD}\s+){{4}}{_CRON_FIELD}\s*$")
NICKNAMES: Final = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@hourly"})


def validate_cron(cron: str) -> str:
    cron = cron.strip()
    if (cron not in NICKNAMES and not CRON_RE.match(cron)) or not _croniter().is_valid(cron):
        raise Invalid(
            f"'{cron}' is not a cron expression (five fields: minute hour day month "
            "weekday, e.g. '*/5 * * * *').",
            field="cron",
        )
    return cron


def _croniter() -> Any:
    # Prefect's vendored croniter: the cron dialect Prefect itself speaks. Imported on
    # first use (it imports prefect, which takes a while).
    return importlib.import_module("prefect._vendor.croniter").croniter


def next_fires(
    cron: str, timezone: str, after: datetime, until: datetime, *, limit: int = 20
) -> list[datetime]:
    """The schedule's fire times in (after, until], UTC, at most `limit`."""
    zone = zoneinfo.ZoneInfo(timezone)
    it = _croniter()(cron, after.astimezone(zone))
    fires: list[datetime] = []
    while len(fires) < limit:
        fire: datetime = it.get_next(datetime)
        if fire > until:
            break
        fires.append(fire.astimezone(UTC))
    return fires


def validate_timezone(tz: str) -> str:
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise Invalid(
            f"Unknown time zone '{tz}' (use e.g. 'UTC', 'Europe/Paris').", field="timezone"
        ) from None
    return tz


def _snapshot(sched: Schedule, dep_name: str) -> dict[str, Any]:
    return {
        "deployment": dep_name,
        "cron": sched.cron,
        "timezone": sched.timezone,
        "parameters": dict(sched.parameters or {}),
        "active": sched.active,
    }


def create_schedule(
    ctx: OrgContext,
    session: Session,
    gateway: PrefectGateway,
    *,
    deployment: str,
    cron: str,
    timezone: str = "UTC",
    parameters: Mapping[str, Any] | None = None,
    active: bool = True,
    backend: str = "control-plane",
) -> tuple[Schedule, Deployment]:
    ctx.require(Permission.schedules_manage_own)
    cron = validate_cron(cron)
    timezone = validate_timezone(timezone)
    try:
        dep = get_deployment(session, ctx.org, deployment)
    except NotFound:
        raise Invalid(
            f"No deployment '{deployment}' in this organization.", field="deployment"
        ) from None
    params = dict(parameters or {})
    validate_parameters(
        dep.parameter_schema or {},
        {**(dep.parameters or {}), **params},
        flow=f"deployment '{dep.name}'",
    )
    if dep.prefect_deployment_id is None:
        raise Invalid(
            f"Deployment '{dep.name}' is not registered with Prefect.", field="deployment"
        )
    session.commit()  # no transaction open while Prefect answers

    schedule_id = uuid.uuid4()
    prefect_schedule_id = gateway.create_deployment_schedule(
        dep.prefect_deployment_id,
        cron=cron,
        timezone=timezone,
        active=active and backend == "prefect",
        parameters=params,
        slug=schedule_slug(schedule_id),
    )
    sched = Schedule(
        id=schedule_id,
        org_id=ctx.org.id,
        deployment_id=dep.id,
        user_id=ctx.user.id,
        cron=cron,
        timezone=timezone,
        parameters=params,
        active=active,
        prefect_schedule_id=prefect_schedule_id,
    )
    session.add(sched)
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="schedule.created",
        target_type="schedule",
        target_id=schedule_id,
        after=_snapshot(sched, dep.name),
    )
    session.commit()
    return sched, dep


def list_schedules(ctx: OrgContext, session: Session) -> list[tuple[Schedule, str, str]]:
    """Every schedule of the org with its deployment's and its owner's names."""
    rows = session.execute(
        select(Schedule, Deployment.name, User.name)
        .join(Deployment, Deployment.id == Schedule.deployment_id)
        .join(User, User.id == Schedule.user_id)
        .where(Schedule.org_id == ctx.org.id)
        .order_by(Schedule.created_at)
    ).all()
    return [(sched, dep_name, user_name) for sched, dep_name, user_name in rows]


def get_schedule(
    ctx: OrgContext, session: Session, schedule_id: uuid.UUID
) -> tuple[Schedule, Deployment]:
    sched = session.get(Schedule, schedule_id)
    if sched is None or sched.org_id != ctx.org.id:
        raise NotFound("No such schedule in this organization.", code="schedule_not_found")
    dep = session.get(Deployment, sched.deployment_id)
    assert dep is not None  # schedules are deleted with their deployment
    return sched, dep


def set_active(
    ctx: OrgContext,
    session: Session,
    gateway: PrefectGateway,
    schedule_id: uuid.UUID,
    active: bool,
    *,
    backend: str = "control-plane",
) -> tuple[Schedule, Deployment]:
    """Pause (False) or resume (True) a schedule: its owner, or an admin."""
    sched, dep = get_schedule(ctx, session, schedule_id)
    ctx.require_own_or(sched.user_id, Permission.schedules_manage_all)
    if sched.active == active:
        session.commit()
        return sched, dep
    session.commit()
    if (
        backend == "prefect"
        and dep.prefect_deployment_id is not None
        and sched.prefect_schedule_id is not None
    ):
        gateway.set_deployment_schedule_active(
            dep.prefect_deployment_id, sched.prefect_schedule_id, active
        )
    sched, dep = get_schedule(ctx, session, schedule_id)
    before = _snapshot(sched, dep.name)
    sched.active = active
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="schedule.resumed" if active else "schedule.paused",
        target_type="schedule",
        target_id=sched.id,
        before=before,
        after=_snapshot(sched, dep.name),
    )
    session.commit()
    return sched, dep


def delete_schedule(
    ctx: OrgContext, session: Session, gateway: PrefectGateway, schedule_id: uuid.UUID
) -> None:
    sched, dep = get_schedule(ctx, session, schedule_id)
    ctx.require_own_or(sched.user_id, Permission.schedules_manage_all)
    prefect_ids = (dep.prefect_deployment_id, sched.prefect_schedule_id)
    session.commit()
    if prefect_ids[0] is not None and prefect_ids[1] is not None:
        gateway.delete_deployment_schedule(prefect_ids[0], prefect_ids[1])
    sched, dep = get_schedule(ctx, session, schedule_id)
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="schedule.deleted",
        target_type="schedule",
        target_id=sched.id,
        before=_snapshot(sched, dep.name),
    )
    session.delete(sched)
    session.commit()
