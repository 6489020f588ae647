"""The organization overview, per-user usage, and notification settings.

- `GET /orgs/{org}/overview` (members): machines, capacity, jobs now, compute time;
- `GET /orgs/{org}/usage?since=&until=&period=` (admins): per user, heaviest first, the
  storage datasets and bundles hold against `storage.max_bytes` and what the window
  added, active members, and per day/week/month with `period`; CSV with `format=csv`;
- `GET /orgs/{org}/usage/me` (every member): the same numbers for the caller alone, their
  jobs by state and the storage of the datasets they created;
- `GET/PUT /orgs/{org}/notifications` (admins), `POST .../notifications/test`,
  `GET .../notifications/deliveries` (the last deliveries and their outcome).
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import Requires, SessionDep, SettingsDep
from api.routers.machine_types import ScalingOut, scaling_out
from datasets import quota
from orgs import capacity, notifications, usage_views
from orgs.context import OrgContext
from orgs.models import User
from policies.errors import Invalid
from policies.permissions import Permission

router = APIRouter(tags=["overview"])

OverviewView = Annotated[OrgContext, Depends(Requires(Permission.overview_view))]
UsageView = Annotated[OrgContext, Depends(Requires(Permission.usage_view))]
OwnUsageView = Annotated[OrgContext, Depends(Requires(Permission.usage_view_own))]
SettingsUpdate = Annotated[OrgContext, Depends(Requires(Permission.settings_update))]

Since = Annotated[
    datetime | None,
    Query(description="Window start, inclusive; UTC if no zone. Default: 30 days before `until`."),
]
Until = Annotated[
    datetime | None, Query(description="Window end, exclusive; UTC if no zone. Default: now.")
]


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def _window(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    start, end = usage_views.window(_aware(since), _aware(until))
    if start >= end:
        raise Invalid("'since' must be before 'until'.", field="since")
    if end - start > timedelta(days=3660):
        raise Invalid("The window may span at most ten years.", field="since")
    return start, end


# --------------------------------------------------------------------------- overview


class Counts(BaseModel):
    machines: int = Field(description="Registered machines, any status.")
    online: int = Field(description="Approved machines with a recent heartbeat.")
    pending: int = Field(description="Machines awaiting approval.")
    slots: int = Field(description="Job slots of online machines.")
    free_slots: int = Field(description="Available capacity: online slots not running a job.")
    active_jobs: int = Field(description="Jobs holding a slot: scheduled, running, cancelling.")
    running_jobs: int = Field(description="Jobs on a machine now.")
    queued_jobs: int = Field(description="Held jobs waiting for a slot.")
    compute_seconds: float = Field(
        description="Sum of job run time in the window, one slot per job, clipped to it."
    )
    compute_hours: float
    idle_machines: int = Field(description="Approved machines with no job for `idle_hours`.")


class TypeOverviewOut(Counts):
    machine_type: str


class ScalingEventOut(BaseModel):
    at: datetime
    action: str = Field(description="machine.scaled_up, .draining, .scaled_down or .replaced.")
    machine_id: str
    name: str
    reason: str


class OverviewOut(Counts):
    since: datetime
    until: datetime
    idle_hours: float
    by_type: list[TypeOverviewOut]
    scaling: list[ScalingOut] = Field(
        default_factory=list, description="Elastic machine types: providers and their machines."
    )
    scaling_events: list[ScalingEventOut] = Field(
        default_factory=list, description="The latest machine starts and stops, newest first."
    )


def _counts(c: usage_views.Overview | usage_views.TypeOverview) -> dict[str, object]:
    return {
        "machines": c.machines,
        "online": c.online,
        "pending": c.pending,
        "slots": c.slots,
        "free_slots": c.free_slots,
        "active_jobs": c.active_jobs,
        "running_jobs": c.running_jobs,
        "queued_jobs": c.queued_jobs,
        "compute_seconds": round(c.compute_seconds, 3),
        "compute_hours": round(c.compute_seconds / 3600, 3),
        "idle_machines": c.idle_machines,
    }


@router.get("/orgs/{org}/overview")
def get_overview(
    ctx: OverviewView,
    session: SessionDep,
    since: Since = None,
    until: Until = None,
    idle_hours: Annotated[
        float, Query(gt=0, le=24 * 365, description="A machine idle this long counts as idle.")
    ] = 24,
) -> OverviewOut:
    start, end = _window(since, until)
    o = usage_views.overview(
        session, ctx.org, since=start, until=end, idle_after=timedelta(hours=idle_hours)
    )
    return OverviewOut(
        since=o.since,
        until=o.until,
        idle_hours=idle_hours,
        by_type=[TypeOverviewOut(machine_type=t.machine_type, **_counts(t)) for t in o.by_type],
        scaling=[scaling_out(v) for v in capacity.list_views(session, ctx)],
        scaling_events=[
            ScalingEventOut(
                at=e.at, action=e.action, machine_id=e.machine_id, name=e.name, reason=e.reason
            )
            for e in capacity.recent_events(session, ctx.org.id)
        ],
        **_counts(o),
    )


# ------------------------------------------------------------------------------ usage


class UserUsageOut(BaseModel):
    user_id: uuid.UUID
    name: str
    compute_seconds: float
    compute_hours: float
    jobs_run: int = Field(description="Jobs that started in the window.")
    jobs_held: int = Field(description="Jobs created in the window that waited for a slot.")
    running_now: int
    active_now: int
    queued_now: int


class StorageUsageOut(BaseModel):
    used_bytes: int = Field(
        description="What the org's live dataset versions and code bundles hold now (the "
        "quota counts this)."
    )
    max_bytes: int | None = Field(description="storage.max_bytes (null: unlimited).")
    datasets_bytes: int = Field(description="Live dataset versions, now.")
    bundles_bytes: int = Field(description="Code bundles, now.")
    datasets_added_bytes: int = Field(description="Dataset versions created in the window.")
    bundles_added_bytes: int = Field(description="Code bundles uploaded in the window.")


class PeriodOut(BaseModel):
    start: datetime
    end: datetime
    compute_seconds: float
    compute_hours: float
    jobs_run: int = Field(description="Jobs that started in the period.")
    active_members: int = Field(description="Members who submitted a job in the period.")
    datasets_added_bytes: int
    bundles_added_bytes: int


class UsageOut(BaseModel):
    since: datetime
    until: datetime
    storage: StorageUsageOut
    compute_seconds: float
    compute_hours: float
    active_members: int = Field(description="Members who submitted a job in the window.")
    members: int = Field(description="Members of the organization now.")
    periods: list[PeriodOut] | None = Field(
        default=None, description="With `period`: the window cut into days, weeks or months."
    )
    items: list[UserUsageOut]
    total: int
    limit: int
    offset: int


Period = Annotated[
    Literal["day", "week", "month"] | None,
    Query(description="Also report per UTC day, ISO week or calendar month of the window."),
]
Format = Annotated[
    Literal["json", "csv"] | None,
    Query(description="csv: a CSV table (also with `Accept: text/csv`)."),
]


def _wants_csv(request: Request, format: str | None) -> bool:
    if format is not None:
        return format == "csv"
    return "text/csv" in request.headers.get("accept", "")


def _csv(rows: list[dict[str, object]], columns: list[str], filename: str) -> Response:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _periods(
    session: Session, ctx: OrgContext, start: datetime, end: datetime, period: str
) -> list[PeriodOut]:
    try:
        cuts = usage_views.periods(start, end, period)
    except ValueError as exc:
        raise Invalid(f"{exc}; narrow the window or use a longer period.", field="period") from None
    out: list[PeriodOut] = []
    for a, b in cuts:
        u = usage_views.usage(session, ctx.org, since=a, until=b)
        datasets_added, bundles_added = quota.added_bytes(session, ctx.org.id, a, b)
        out.append(
            PeriodOut(
                start=a,
                end=b,
                compute_seconds=round(u.compute_seconds, 3),
                compute_hours=round(u.compute_seconds / 3600, 3),
                jobs_run=sum(r.jobs_run for r in u.users),
                active_members=usage_views.active_members(session, ctx.org, since=a, until=b),
                datasets_added_bytes=datasets_added,
                bundles_added_bytes=bundles_added,
            )
        )
    return out


@router.get(
    "/orgs/{org}/usage",
    response_model=UsageOut,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV on request."}},
)
def get_usage(
    ctx: UsageView,
    session: SessionDep,
    request: Request,
    since: Since = None,
    until: Until = None,
    user: Annotated[str | None, Query(max_length=64, description="Only this user name.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    period: Period = None,
    format: Format = None,
) -> UsageOut | Response:
    """Per-user compute and jobs, the org's storage and active members over the window;
    CSV (per user, or per period with `period`) with `format=csv` or `Accept: text/csv`."""
    start, end = _window(since, until)
    user_id = None
    if user is not None:
        user_id = session.scalar(select(User.id).where(User.name == user))
        if user_id is None:
            raise Invalid(f"No user named '{user}'.", field="user")
    u = usage_views.usage(session, ctx.org, since=start, until=end, user_id=user_id)
    page = u.users[offset : offset + limit]
    stored = quota.quota_of(session, ctx.org)
    use = quota.storage_use(session, ctx.org.id, u.since, u.until)
    out = UsageOut(
        since=u.since,
        until=u.until,
        storage=StorageUsageOut(
            used_bytes=stored.used,
            max_bytes=stored.limit,
            datasets_bytes=use.datasets_bytes,
            bundles_bytes=use.bundles_bytes,
            datasets_added_bytes=use.datasets_added_bytes,
            bundles_added_bytes=use.bundles_added_bytes,
        ),
        compute_seconds=round(u.compute_seconds, 3),
        compute_hours=round(u.compute_seconds / 3600, 3),
        active_members=usage_views.active_members(session, ctx.org, since=u.since, until=u.until),
        members=usage_views.member_count(session, ctx.org),
        periods=_periods(session, ctx, u.since, u.until, period) if period else None,
        items=[
            UserUsageOut(
                user_id=r.user_id,
                name=r.name,
                compute_seconds=round(r.compute_seconds, 3),
                compute_hours=round(r.compute_hours, 3),
                jobs_run=r.jobs_run,
                jobs_held=r.jobs_held,
                running_now=r.running_now,
                active_now=r.active_now,
                queued_now=r.queued_now,
            )
            for r in page
        ],
        total=len(u.users),
        limit=limit,
        offset=offset,
    )
    if not _wants_csv(request, format):
        return out
    stamp = f"{out.since:%Y%m%d}-{out.until:%Y%m%d}"
    if out.periods is not None:
        return _csv(
            [p.model_dump() for p in out.periods],
            list(PeriodOut.model_fields),
            f"usage-{ctx.org.slug}-{period}-{stamp}.csv",
        )
    return _csv(
        [{"user": i.name, **i.model_dump()} for i in out.items],
        ["user", *(f for f in UserUsageOut.model_fields if f not in ("name",))],
        f"usage-{ctx.org.slug}-{stamp}.csv",
    )


class MyUsageOut(BaseModel):
    since: datetime
    until: datetime
    user_id: uuid.UUID
    name: str
    compute_seconds: float
    compute_hours: float
    jobs_run: int = Field(description="Jobs that started in the window.")
    jobs_held: int = Field(description="Jobs created in the window that waited for a slot.")
    running_now: int
    active_now: int
    queued_now: int
    jobs_by_state: dict[str, int] = Field(description="Jobs created in the window, by state.")
    storage_bytes: int = Field(description="Live versions of the datasets you created.")


def own_usage(session: Session, ctx: OrgContext, start: datetime, end: datetime) -> MyUsageOut:
    """The caller's own numbers: the org-wide usage view narrowed to them."""
    u = usage_views.usage(session, ctx.org, since=start, until=end, user_id=ctx.user.id)
    mine = u.users[0] if u.users else usage_views.UserUsage(ctx.user.id, name=ctx.user.name)
    return MyUsageOut(
        since=u.since,
        until=u.until,
        user_id=ctx.user.id,
        name=ctx.user.name,
        compute_seconds=round(mine.compute_seconds, 3),
        compute_hours=round(mine.compute_hours, 3),
        jobs_run=mine.jobs_run,
        jobs_held=mine.jobs_held,
        running_now=mine.running_now,
        active_now=mine.active_now,
        queued_now=mine.queued_now,
        jobs_by_state=usage_views.jobs_by_state_of(
            session, ctx.org, ctx.user.id, since=u.since, until=u.until
        ),
        storage_bytes=quota.owned_bytes(session, ctx.org.id, ctx.user.id),
    )


@router.get(
    "/orgs/{org}/usage/me",
    response_model=MyUsageOut,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV on request."}},
)
def get_my_usage(
    ctx: OwnUsageView,
    session: SessionDep,
    request: Request,
    since: Since = None,
    until: Until = None,
    format: Format = None,
) -> MyUsageOut | Response:
    """Your own usage in the organization (every member): compute, jobs, storage; one
    CSV row with `format=csv` or `Accept: text/csv`."""
    start, end = _window(since, until)
    mine = own_usage(session, ctx, start, end)
    if not _wants_csv(request, format):
        return mine
    row = mine.model_dump(exclude={"jobs_by_state"})
    row.update({f"jobs_{state}": n for state, n in mine.jobs_by_state.items()})
    return _csv([row], list(row), f"usage-{ctx.org.slug}-{ctx.user.name}-{start:%Y%m%d}.csv")


# ---------------------------------------------------------------------- notifications

EventName = Literal[
    "job.completed",
    "job.failed",
    "job.crashed",
    "job.cancelled",
    "machine.pending_approval",
    "machine.offline",
    "member.joined",
    "member.left",
    "join_request.created",
]


class TargetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: notifications.Kind
    url: str = Field(
        max_length=2048,
        description="Slack, Teams (workflow) or Discord: the webhook URL the service gave; "
        "email: `mailto:<address>`; webhook: an http(s) URL on a public address.",
    )
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=256,
        description="Webhooks: the HMAC-SHA256 signing key. Omit to keep the current one.",
    )
    events: list[EventName] = Field(
        default_factory=list,
        max_length=16,
        description="Empty: every event but job.completed and job.cancelled.",
    )


class NotificationsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: list[TargetIn] = Field(max_length=notifications.MAX_TARGETS)


class TargetOut(BaseModel):
    id: uuid.UUID
    kind: str
    url: str
    events: list[str]
    secret_set: bool
    created_at: datetime


class NotificationsOut(BaseModel):
    targets: list[TargetOut]
    events: list[str] = Field(description="Every event a target can subscribe to.")


class DeliveryOut(BaseModel):
    id: int
    event: str
    target_id: uuid.UUID
    status: str
    attempts: int
    last_status: int | None
    last_error: str
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None


class DeliveriesOut(BaseModel):
    items: list[DeliveryOut]


class QueuedOut(BaseModel):
    queued: int


def _notifications_out(targets: list[notifications.NotificationTarget]) -> NotificationsOut:
    return NotificationsOut(
        targets=[
            TargetOut(
                id=t.id,
                kind=t.kind,
                url=t.url,
                events=list(t.events),
                secret_set=bool(t.secret),
                created_at=t.created_at,
            )
            for t in targets
        ],
        events=list(notifications.EVENTS),
    )


@router.get("/orgs/{org}/notifications")
def get_notifications(ctx: SettingsUpdate, session: SessionDep) -> NotificationsOut:
    """The org's targets (admins: a Slack URL is itself a credential). Secrets never leave."""
    return _notifications_out(notifications.list_targets(session, ctx.org.id))


@router.put("/orgs/{org}/notifications")
def put_notifications(
    ctx: SettingsUpdate, session: SessionDep, settings: SettingsDep, body: NotificationsIn
) -> NotificationsOut:
    """Replace the org's targets. URLs must be http(s) on public addresses (422 otherwise)."""
    specs = [
        notifications.TargetSpec(kind=t.kind, url=t.url, secret=t.secret, events=tuple(t.events))
        for t in body.targets
    ]
    targets = notifications.replace_targets(ctx, session, specs, settings=settings)
    return _notifications_out(targets)


@router.post("/orgs/{org}/notifications/test", status_code=202)
def test_notifications(ctx: SettingsUpdate, session: SessionDep) -> QueuedOut:
    """Queue a test delivery to every target; see the result under `deliveries`."""
    return QueuedOut(queued=notifications.send_test(ctx, session))


@router.get("/orgs/{org}/notifications/deliveries")
def get_deliveries(
    ctx: SettingsUpdate,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeliveriesOut:
    rows = notifications.list_deliveries(session, ctx.org.id, limit=limit)
    return DeliveriesOut(
        items=[
            DeliveryOut(
                id=r.id,
                event=r.event,
                target_id=r.target_id,
                status=r.status,
                attempts=r.attempts,
                last_status=r.last_status,
                last_error=r.last_error,
                created_at=r.created_at,
                next_attempt_at=r.next_attempt_at if r.status == notifications.PENDING else None,
                delivered_at=r.delivered_at,
            )
            for r in rows
            if r.target_id is not None  # list_deliveries gives only target rows
        ]
    )
