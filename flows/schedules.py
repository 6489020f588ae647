"""Recurring jobs: schedules on an org's deployments, owned by a member.

Three kinds, as in Prefect: ``cron`` (with a time zone), ``interval`` (every N seconds
from an anchor date, in a time zone) and ``rrule`` (RFC 5545 recurrence rule). Fire times
of interval and rrule schedules are computed by Prefect's own schedule models, so both
backends below agree on them. Schedules declared in a prefect.yaml (``declared``) are
replaced as a set by the next `cshare deploy` of that file (``sync_declared``); those
made with `cshare schedule create` are never touched by a deploy.

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

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flows import visibility
from flows.deployments import get_deployment, schedule_slug, validate_parameters
from flows.gateway import PrefectGateway
from flows.models import Deployment, Schedule
from flows.schedule_kinds import (
    ScheduleSpec,
    fires,
    next_fires,
    spec_of,
    validate_cron,
    validate_spec,
    validate_timezone,
)
from orgs import audit
from orgs.context import OrgContext
from orgs.models import User
from policies.errors import Invalid, NotFound
from policies.permissions import Permission

__all__ = [
    "DeclaredSchedule",
    "ScheduleSpec",
    "check_declared",
    "create_schedule",
    "delete_schedule",
    "fires",
    "get_schedule",
    "list_schedules",
    "next_fires",
    "set_active",
    "spec_of",
    "sync_declared",
    "validate_cron",
    "validate_spec",
    "validate_timezone",
]


def _snapshot(sched: Schedule, dep_name: str) -> dict[str, Any]:
    return {
        "deployment": dep_name,
        "kind": sched.kind,
        "cron": sched.cron,
        "interval_s": sched.interval_s,
        "anchor_date": sched.anchor_date.isoformat() if sched.anchor_date else None,
        "rrule": sched.rrule,
        "declared": sched.declared,
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
    cron: str | None = None,
    timezone: str = "UTC",
    parameters: Mapping[str, Any] | None = None,
    active: bool = True,
    backend: str = "control-plane",
    spec: ScheduleSpec | None = None,
) -> tuple[Schedule, Deployment]:
    """A schedule of `deployment`: `cron` (+ `timezone`), or any kind as `spec`."""
    ctx.require(Permission.schedules_manage_own)
    spec = spec or validate_spec(kind="cron", cron=cron or "", timezone=timezone)
    try:
        dep = get_deployment(session, ctx.org, deployment, viewer=ctx.viewer)
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
    prefect_deployment_id = dep.prefect_deployment_id
    session.commit()  # no transaction open while Prefect answers

    sched = _add(
        ctx,
        session,
        gateway,
        dep.id,
        prefect_deployment_id,
        spec,
        params,
        active=active,
        declared=False,
        backend=backend,
    )
    session.commit()
    return sched, get_deployment(session, ctx.org, deployment, viewer=ctx.viewer)


def _add(
    ctx: OrgContext,
    session: Session,
    gateway: PrefectGateway,
    deployment_id: uuid.UUID,
    prefect_deployment_id: uuid.UUID,
    spec: ScheduleSpec,
    params: dict[str, Any],
    *,
    active: bool,
    declared: bool,
    backend: str,
) -> Schedule:
    """Prefect's schedule, then our row and its audit event (the caller commits)."""
    schedule_id = uuid.uuid4()
    prefect_schedule_id = gateway.create_deployment_schedule(
        prefect_deployment_id,
        schedule=spec.prefect_schedule(),
        active=active and backend == "prefect",
        parameters=params,
        slug=schedule_slug(schedule_id),
    )
    dep = session.get(Deployment, deployment_id)
    if dep is None:
        raise NotFound("The deployment was deleted meanwhile.", code="not_found")
    sched = Schedule(
        id=schedule_id,
        org_id=ctx.org.id,
        deployment_id=deployment_id,
        user_id=ctx.user.id,
        kind=spec.kind,
        cron=spec.cron,
        interval_s=spec.interval_s,
        anchor_date=spec.anchor_date,
        rrule=spec.rrule,
        declared=declared,
        timezone=spec.timezone,
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
    return sched


@dataclass(frozen=True)
class DeclaredSchedule:
    """One schedule of a prefect.yaml deployment."""

    spec: ScheduleSpec
    parameters: Mapping[str, Any]
    active: bool = True

    def key(self) -> tuple[Any, ...]:
        return (
            self.spec,
            tuple(sorted((k, repr(v)) for k, v in self.parameters.items())),
            self.active,
        )


def check_declared(
    schema: Mapping[str, Any],
    defaults: Mapping[str, Any],
    declared: Sequence[DeclaredSchedule],
    deployment: str,
) -> None:
    """Each declared schedule's parameters fit the flow (before anything is written)."""
    for i, item in enumerate(declared):
        try:
            validate_parameters(
                schema, {**defaults, **item.parameters}, flow=f"deployment '{deployment}'"
            )
        except Invalid as exc:
            raise Invalid(
                f"Schedule #{i + 1}: {exc.detail}", field=f"schedules.{i}.{exc.field}"
            ) from None


def sync_declared(
    ctx: OrgContext,
    session: Session,
    gateway: PrefectGateway,
    dep: Deployment,
    declared: Sequence[DeclaredSchedule],
    *,
    backend: str = "control-plane",
) -> list[Schedule]:
    """Make the deployment's prefect.yaml schedules exactly `declared` (as `prefect
    deploy` does): unchanged ones are kept (their fire history too), others removed or
    added. Schedules members made by hand stay. Returns the declared schedules now."""
    ctx.require(Permission.schedules_manage_own)
    for item in declared:
        validate_parameters(
            dep.parameter_schema or {},
            {**(dep.parameters or {}), **item.parameters},
            flow=f"deployment '{dep.name}'",
        )
    current = list(
        session.scalars(select(Schedule).where(Schedule.deployment_id == dep.id, Schedule.declared))
    )
    for sched in current:  # another member's declared schedules: theirs to replace
        ctx.require_own_or(sched.user_id, Permission.schedules_manage_all)
    wanted = {item.key(): item for item in declared}
    keep = {
        sched.id
        for sched in current
        if DeclaredSchedule(spec_of(sched), dict(sched.parameters or {}), sched.active).key()
        in wanted
    }
    have = {
        DeclaredSchedule(spec_of(s), dict(s.parameters or {}), s.active).key()
        for s in current
        if s.id in keep
    }
    removed = [(s.id, s.prefect_schedule_id) for s in current if s.id not in keep]
    dep_id, prefect_dep_id, dep_name = dep.id, dep.prefect_deployment_id, dep.name
    if prefect_dep_id is None:
        raise Invalid(
            f"Deployment '{dep_name}' is not registered with Prefect.", field="deployment"
        )
    session.commit()

    for _sid, prefect_sid in removed:
        if prefect_sid is not None:
            gateway.delete_deployment_schedule(prefect_dep_id, prefect_sid)
    for sid, _prefect_sid in removed:
        row = session.get(Schedule, sid)
        if row is None:
            continue
        audit.record(
            session,
            org_id=ctx.org.id,
            actor=ctx.user,
            action="schedule.deleted",
            target_type="schedule",
            target_id=sid,
            before=_snapshot(row, dep_name),
        )
        session.delete(row)
    for key, item in wanted.items():
        if key in have:
            continue
        _add(
            ctx,
            session,
            gateway,
            dep_id,
            prefect_dep_id,
            item.spec,
            dict(item.parameters),
            active=item.active,
            declared=True,
            backend=backend,
        )
    session.commit()
    return list(
        session.scalars(
            select(Schedule)
            .where(Schedule.deployment_id == dep_id, Schedule.declared)
            .order_by(Schedule.created_at)
        )
    )


def list_schedules(ctx: OrgContext, session: Session) -> list[tuple[Schedule, str, str]]:
    """Every schedule of the org with its deployment's and its owner's names."""
    rows = session.execute(
        select(Schedule, Deployment.name, User.name)
        .join(Deployment, Deployment.id == Schedule.deployment_id)
        .join(User, User.id == Schedule.user_id)
        .where(
            Schedule.org_id == ctx.org.id,
            Schedule.deployment_id.in_(visibility.visible_deployment_ids(ctx.viewer)),
        )
        .order_by(Schedule.created_at)
    ).all()
    return [(sched, dep_name, user_name) for sched, dep_name, user_name in rows]


def get_schedule(
    ctx: OrgContext, session: Session, schedule_id: uuid.UUID
) -> tuple[Schedule, Deployment]:
    sched = session.get(Schedule, schedule_id)
    dep = session.get(Deployment, sched.deployment_id) if sched is not None else None
    # One guard: the org's, and the deployment's project visible (policies.visibility).
    if (
        sched is None
        or dep is None
        or sched.org_id != ctx.org.id
        or not visibility.can_see_deployment(session, ctx.viewer, dep)
    ):
        raise NotFound("No such schedule in this organization.", code="schedule_not_found")
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
