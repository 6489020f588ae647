"""Read models over machines and the job ledger: the org overview, per-user usage over a
time window, machine activity (idle machines), and the counts `/metrics` shows.

Every number comes from a few aggregate statements, each branch served by an index (see
`migrations/versions/0006_ops.py` and `0007_usage_perf.py`), so the cost grows with the
rows in the window or in a non-final state, not with the organization's whole history:

- jobs that ended in a window: `ix_jobs_org_ended` (org_id, ended_at, started_at,
  machine_type, user_id), an index-only range scan that covers the compute-time sums;
- non-final jobs: the partial index `ix_jobs_org_open` (org_id, state), a few rows;
- jobs created in a window that waited for a slot: the partial index
  `ix_jobs_org_held_created` (org_id, created_at, user_id), index-only;
- a machine's last finished job: `ix_jobs_machine_ended` (one index probe per machine).

The overview's and the usage view's job numbers are one statement each (`_per_key`): the
branches above grouped by machine type or by user and added up in SQL, with the user
names joined in, so no rows and no id lists travel to Python beyond one row per group.
The window scan is the floor: about 50,000 index entries for 30 days of a busy org (see
`bench/overview.py`). A daily rollup would not shrink that much for the per-user view (a
user runs a job or two a day, so (user, type, day) rows are nearly as many as jobs) and
would need every code path that finishes a job to maintain it.

`orgs/` sits below `flows/` (imports point down only), so the ledger is read through a
lightweight table naming just the columns used here, and the state names are repeated
(a unit test checks them against `flows.models`).

Compute time is wall-clock seconds of running jobs, one slot each, clipped to the window:
a job that ran 10:00-12:00 counts 1 h in a window that starts at 11:00. A job still
running counts up to now.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Select,
    String,
    Uuid,
    bindparam,
    case,
    cast,
    column,
    func,
    literal_column,
    select,
    table,
    union_all,
)
from sqlalchemy.orm import Session, load_only
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression

from orgs import machines
from orgs.db import UTCDateTime, utcnow
from orgs.models import Machine, Membership, Organization, User
from orgs.settings_doc import load as load_settings

# Job states (API.md); must equal flows.models' constants.
HELD: Final = "held"
SCHEDULED: Final = "scheduled"
RUNNING: Final = "running"
CANCELLING: Final = "cancelling"
FINAL_STATES: Final = ("completed", "failed", "crashed", "cancelled", "rejected")
ACTIVE_STATES: Final = (SCHEDULED, RUNNING, CANCELLING)  # each holds one of the user's slots
ON_MACHINE_STATES: Final = (RUNNING, CANCELLING)  # occupy a slot of a machine
OPEN_STATES: Final = (HELD, *ACTIVE_STATES)
ALL_STATES: Final = (*OPEN_STATES, *FINAL_STATES)
MACHINE_STATUSES: Final = ("pending", "approved", "rejected")

DEFAULT_WINDOW: Final = timedelta(days=30)

jobs = table(
    "jobs",
    column("id", Uuid),
    column("org_id", Uuid),
    column("user_id", Uuid),
    column("state", String),
    column("machine_type", String),
    column("machine_id", Uuid),
    column("created_at", UTCDateTime),
    column("released_at", UTCDateTime),
    column("started_at", UTCDateTime),
    column("ended_at", UTCDateTime),
)


# --------------------------------------------------------------------------- helpers
#
# Statements are built once per dialect and shape (functools.cache) with named bind
# parameters, and executed with the values: building one costs more Python than
# SQLAlchemy's compiled-statement cache lookup it then hits.

ORG: Final = bindparam("org_id", type_=Uuid())
USER: Final = bindparam("user_id", type_=Uuid())
SINCE: Final = bindparam("since", type_=UTCDateTime())
UNTIL: Final = bindparam("until", type_=UTCDateTime())
NOW: Final = bindparam("now", type_=UTCDateTime())


def _sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def _greatest(sqlite: bool, a: Any, b: Any) -> ColumnElement[Any]:
    return func.max(a, b) if sqlite else func.greatest(a, b)


def _least(sqlite: bool, a: Any, b: Any) -> ColumnElement[Any]:
    return func.min(a, b) if sqlite else func.least(a, b)


def _seconds(sqlite: bool, start: Any, end: Any) -> ColumnElement[float]:
    """`end - start` in seconds, in SQL (SQLite keeps timestamps as ISO text).

    PostgreSQL: `date_part` (double precision) rather than `EXTRACT`, which returns
    numeric since PostgreSQL 14 and costs half again as much per row in a window sum.
    """
    if sqlite:
        return cast((func.julianday(end) - func.julianday(start)) * 86400.0, Float)
    return func.date_part("epoch", end - start, type_=Float)


def _clipped_seconds(sqlite: bool, start: Any, end: Any) -> ColumnElement[float]:
    """Seconds of [start, end) inside [since, until) (negative when they do not meet)."""
    return _seconds(sqlite, _greatest(sqlite, start, SINCE), _least(sqlite, end, UNTIL))


def _sum0(sqlite: bool, expr: Any) -> ColumnElement[float]:
    """`max(0, sum(expr))`, 0 when no row counts: a group's compute time."""
    zero: ColumnElement[float] = literal_column("0.0")
    return _greatest(sqlite, func.coalesce(func.sum(expr), zero), zero)


def _is(col: Any, *values: str) -> ColumnElement[bool]:
    """`col IN ('a', 'b')` with the values inlined, never bound: a partial index
    (`ix_jobs_org_open`, `ix_jobs_org_held_created`) is only used when the query visibly
    implies its predicate, on SQLite and in PostgreSQL's generic plans alike."""
    assert all(v.isidentifier() for v in values)  # our own constants: nothing to escape
    return col.in_([literal_column(f"'{v}'") for v in values])  # type: ignore[no-any-return]


def _group_key(sqlite: bool, col: Any) -> ColumnElement[Any]:
    """The column to GROUP BY. On SQLite `CAST(+col AS <its type>)`, the same value:
    grouped by a plain column, SQLite prefers an index that yields rows in `col` order
    (`ix_jobs_org_user_state`, `ix_jobs_machine_ended`) and then reads every job of the
    org, instead of the range or partial index of the WHERE clause plus a sort of the
    groups (650 ms vs 100 ms for the 30-day usage at 100k jobs). The CAST gives the
    expression the column's affinity back, so a join on it can still use an automatic
    index.
    """
    if not sqlite:
        return col  # type: ignore[no-any-return]
    return cast(UnaryExpression(col, operator=operators.custom_op("+")), col.type)


def offline_after(org: Organization) -> timedelta:
    return timedelta(seconds=load_settings(dict(org.settings or {})).machines.offline_after_s)


# ------------------------------------------------------------------- machine activity


@dataclass(frozen=True, slots=True)
class MachineActivity:
    machine_id: uuid.UUID
    machine_type: str
    status: str
    slots: int
    online: bool  # orgs.machines.health_of: heartbeat within machines.offline_after_s
    running_jobs: int  # from the ledger: jobs running (or being cancelled) on it
    last_job_ended_at: datetime | None
    idle_since: datetime | None  # None while it runs something
    idle_seconds: float | None

    def idle_for_at_least(self, period: timedelta) -> bool:
        return self.idle_seconds is not None and self.idle_seconds >= period.total_seconds()


def machine_activity(
    session: Session, org: Organization, *, now: datetime | None = None
) -> dict[uuid.UUID, MachineActivity]:
    """Per machine of `org`: online, jobs on it, and since when it has had none.

    For the machine list ("idle for N hours") and the overview. One statement: the
    machines with their last finished job (one index probe each on
    `ix_jobs_machine_ended`) and the jobs on each now (the open jobs, `ix_jobs_org_open`,
    grouped by machine). A machine that never ran anything idles since it was approved
    (or registered).
    """
    now = now or utcnow()
    return _activity(org, _machines_of(session, org), now)


@functools.cache
def _machines_stmt(sqlite: bool) -> Select[Any]:
    last_end = (
        select(func.max(jobs.c.ended_at)).where(jobs.c.machine_id == Machine.id).scalar_subquery()
    )
    # The few open jobs (`ix_jobs_org_open`), never an index on machine_id: no
    # `machine_id IS NOT NULL` term (SQLite would range-scan `ix_jobs_machine_ended` on it,
    # every job that ever ran; held jobs' NULL group joins no machine), and on SQLite the
    # `+machine_id` group key (see `_group_key`).
    key = _group_key(sqlite, jobs.c.machine_id)
    on_machine = (
        select(
            key.label("machine_id"),
            func.count().filter(_is(jobs.c.state, *ON_MACHINE_STATES)).label("n"),
        )
        .where(jobs.c.org_id == ORG, _is(jobs.c.state, *OPEN_STATES))
        .group_by(key)
        .subquery("on_machine")
    )
    return (
        select(
            Machine, last_end.label("last_end"), func.coalesce(on_machine.c.n, literal_column("0"))
        )
        .outerjoin(on_machine, on_machine.c.machine_id == Machine.id)
        .options(
            load_only(
                Machine.machine_type,
                Machine.status,
                Machine.slots,
                Machine.running_jobs,
                Machine.last_heartbeat_at,
                Machine.last_job_at,
                Machine.decided_at,
                Machine.created_at,
            )
        )
        .where(Machine.org_id == ORG)
    )


_MachineRow = tuple[Machine, datetime | None, int]


def _machines_of(session: Session, org: Organization) -> list[_MachineRow]:
    """The org's machines (only the columns the views read), each with the end of its
    last job and the number of jobs on it now."""
    return [
        (m, last, int(busy))
        for m, last, busy in session.execute(_machines_stmt(_sqlite(session)), {"org_id": org.id})
    ]


def _activity(
    org: Organization, rows: list[_MachineRow], now: datetime
) -> dict[uuid.UUID, MachineActivity]:
    limit_s = offline_after(org).total_seconds()
    out: dict[uuid.UUID, MachineActivity] = {}
    for m, last, busy in rows:
        ended = max((t for t in (last, m.last_job_at) if t is not None), default=None)
        idle_since = None if busy else (ended or m.decided_at or m.created_at)
        out[m.id] = MachineActivity(
            machine_id=m.id,
            machine_type=m.machine_type,
            status=m.status,
            slots=m.slots,
            online=machines.health_of(m, limit_s, now) is machines.Health.online,
            running_jobs=busy,
            last_job_ended_at=ended,
            idle_since=idle_since,
            idle_seconds=(now - idle_since).total_seconds() if idle_since else None,
        )
    return out


# --------------------------------------------------------------------------- overview


@dataclass
class TypeOverview:
    machine_type: str
    machines: int = 0
    online: int = 0
    pending: int = 0
    slots: int = 0  # of approved machines
    free_slots: int = 0  # on approved, online machines
    active_jobs: int = 0  # scheduled + running + cancelling
    running_jobs: int = 0
    queued_jobs: int = 0  # held
    compute_seconds: float = 0.0
    idle_machines: int = 0


@dataclass
class Overview:
    since: datetime
    until: datetime
    machines: int = 0
    online: int = 0
    pending: int = 0
    slots: int = 0
    free_slots: int = 0
    active_jobs: int = 0
    running_jobs: int = 0
    queued_jobs: int = 0
    compute_seconds: float = 0.0
    idle_machines: int = 0
    idle_after_s: float = 0.0
    by_type: list[TypeOverview] = field(default_factory=list)


def window(
    since: datetime | None, until: datetime | None, *, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """The [since, until) a view covers: default the last 30 days up to now."""
    now = now or utcnow()
    until = until or now
    since = since or (until - DEFAULT_WINDOW)
    return since, until


@functools.cache
def _per_key(sqlite: bool, key: str, *, held: bool, one_user: bool) -> Select[Any]:
    """Per `key` (a jobs column): compute time and jobs started in [since, until), jobs
    created in it that were held (when `held`), and the open jobs now; one statement.

    Rows: (key, seconds, runs, held, running, active, queued). Parameters: org_id, since,
    until, now, and user_id when `one_user`. Three grouped branches, added up per key:
    - finished work: jobs that ended at or after `since` and started before `until`, an
      index-only range scan of `ix_jobs_org_ended` (it covers every column used here);
    - open jobs (`ix_jobs_org_open`): compute of jobs still on a machine up to `now`, and
      how many are held, holding a slot, on a machine;
    - held: jobs created in the window that waited for a slot, i.e. held now or released
      later than submitted (an index-only scan of `ix_jobs_org_held_created`).
    Compute time is clipped to the window and counted as `max(0, sum)` per branch.
    """
    k = _group_key(sqlite, jobs.c[key])
    zero: ColumnElement[int] = literal_column("0")
    mine = [jobs.c.org_id == ORG]
    if one_user:
        mine.append(jobs.c.user_id == USER)

    finished = (
        select(
            k.label("k"),
            _sum0(sqlite, _clipped_seconds(sqlite, jobs.c.started_at, jobs.c.ended_at)).label(
                "seconds"
            ),
            func.count().filter(jobs.c.started_at >= SINCE).label("runs"),
            zero.label("held"),
            zero.label("running"),
            zero.label("active"),
            zero.label("queued"),
        )
        .where(*mine, jobs.c.ended_at >= SINCE, jobs.c.started_at < UNTIL)
        .group_by(k)
    )
    still = (
        _is(jobs.c.state, *ON_MACHINE_STATES)
        & jobs.c.ended_at.is_(None)
        & (jobs.c.started_at < UNTIL)
    )
    live = (
        select(
            k.label("k"),
            _sum0(
                sqlite,
                case((still, _clipped_seconds(sqlite, jobs.c.started_at, NOW)), else_=None),
            ).label("seconds"),
            func.count().filter(still & (jobs.c.started_at >= SINCE)).label("runs"),
            zero.label("held"),
            func.count().filter(_is(jobs.c.state, *ON_MACHINE_STATES)).label("running"),
            func.count().filter(_is(jobs.c.state, *ACTIVE_STATES)).label("active"),
            func.count().filter(_is(jobs.c.state, HELD)).label("queued"),
        )
        .where(*mine, _is(jobs.c.state, *OPEN_STATES))
        .group_by(k)
    )
    branches = [finished, live]
    if held:
        waited = (jobs.c.state == literal_column(f"'{HELD}'")) | (
            jobs.c.released_at > jobs.c.created_at
        )
        branches.append(
            select(
                k.label("k"),
                literal_column("0.0").label("seconds"),
                zero.label("runs"),
                func.count().label("held"),
                zero.label("running"),
                zero.label("active"),
                zero.label("queued"),
            )
            .where(*mine, jobs.c.created_at >= SINCE, jobs.c.created_at < UNTIL, waited)
            .group_by(k)
        )
    parts = union_all(*branches).subquery("parts")

    def total(name: str) -> ColumnElement[int]:
        # sum(bigint) is numeric on PostgreSQL (Decimal in Python): bring it back.
        return cast(func.sum(parts.c[name]), BigInteger).label(name)

    return select(
        parts.c.k,
        func.sum(parts.c.seconds).label("seconds"),
        total("runs"),
        total("held"),
        total("running"),
        total("active"),
        total("queued"),
    ).group_by(parts.c.k)


@functools.cache
def _usage_stmt(sqlite: bool, one_user: bool) -> Select[Any]:
    """`_per_key` by user, with each user's name."""
    per_user = _per_key(sqlite, "user_id", held=True, one_user=one_user).subquery("per_user")
    return select(per_user, User.name).outerjoin(User, User.id == per_user.c.k)


def overview(
    session: Session,
    org: Organization,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    idle_after: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> Overview:
    """The organization at a glance: machines, capacity, jobs now, compute in the window."""
    now = now or utcnow()
    since, until = window(since, until, now=now)
    result = Overview(since=since, until=until, idle_after_s=idle_after.total_seconds())
    types: dict[str, TypeOverview] = {}

    def of(machine_type: str) -> TypeOverview:
        if machine_type not in types:
            types[machine_type] = TypeOverview(machine_type)
        return types[machine_type]

    # One read of the machines serves both the activity and the capacity. Online and free
    # slots follow orgs.machines.capacity exactly (approved machines whose heartbeat is
    # within the org's offline_after_s; free = slots - runs the agent reports); the
    # comparison test in tests/integration/test_overview.py holds the two together.
    rows = _machines_of(session, org)
    activity = _activity(org, rows, now)
    for m, _last, _busy in rows:
        a = activity[m.id]
        t = of(a.machine_type)
        t.machines += 1
        t.pending += a.status == machines.MachineStatus.pending
        if a.status == machines.MachineStatus.approved:
            t.slots += a.slots
            t.idle_machines += a.idle_for_at_least(idle_after)
            if a.online:
                t.online += 1
                t.free_slots += max(0, m.slots - m.running_jobs)

    stmt = _per_key(_sqlite(session), "machine_type", held=False, one_user=False)
    params = {"org_id": org.id, "since": since, "until": until, "now": now}
    for m_type, seconds, _runs, _held, running, active, queued in session.execute(
        stmt, params
    ).tuples():
        t = of(m_type)
        t.queued_jobs += queued
        t.active_jobs += active
        t.running_jobs += running
        t.compute_seconds += float(seconds)

    result.by_type = sorted(types.values(), key=lambda t: t.machine_type)
    for t in result.by_type:
        result.machines += t.machines
        result.online += t.online
        result.pending += t.pending
        result.slots += t.slots
        result.free_slots += t.free_slots
        result.active_jobs += t.active_jobs
        result.running_jobs += t.running_jobs
        result.queued_jobs += t.queued_jobs
        result.compute_seconds += t.compute_seconds
        result.idle_machines += t.idle_machines
    return result


# ------------------------------------------------------------------------------ usage


@dataclass
class UserUsage:
    user_id: uuid.UUID
    name: str = ""
    compute_seconds: float = 0.0
    jobs_run: int = 0  # started inside the window
    jobs_held: int = 0  # created inside the window and made to wait for a slot
    running_now: int = 0  # on a machine now
    active_now: int = 0  # holding a slot now (scheduled, running, cancelling)
    queued_now: int = 0  # held now

    @property
    def compute_hours(self) -> float:
        return self.compute_seconds / 3600.0


@dataclass
class Usage:
    since: datetime
    until: datetime
    users: list[UserUsage]
    compute_seconds: float = 0.0


def usage(
    session: Session,
    org: Organization,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    user_id: uuid.UUID | None = None,
    now: datetime | None = None,
) -> Usage:
    """Per user: compute time and jobs in [since, until), and what they hold right now.

    Users appear when they used something in the window or hold a job now, heaviest
    first. `user_id` narrows to one person.
    """
    now = now or utcnow()
    since, until = window(since, until, now=now)
    params: dict[str, Any] = {"org_id": org.id, "since": since, "until": until, "now": now}
    if user_id is not None:
        params["user_id"] = user_id
    stmt = _usage_stmt(_sqlite(session), user_id is not None)
    rows = [
        UserUsage(
            uid,
            name=name or "",
            compute_seconds=float(seconds),
            jobs_run=runs,
            jobs_held=held,
            running_now=running,
            active_now=active,
            queued_now=queued,
        )
        for uid, seconds, runs, held, running, active, queued, name in session.execute(
            stmt, params
        ).tuples()
    ]
    ordered = sorted(rows, key=lambda r: (-r.compute_seconds, -r.active_now, -r.jobs_run, r.name))
    return Usage(
        since=since,
        until=until,
        users=ordered,
        compute_seconds=sum(r.compute_seconds for r in ordered),
    )


def jobs_by_state_of(
    session: Session,
    org: Organization,
    user_id: uuid.UUID,
    *,
    since: datetime,
    until: datetime,
) -> dict[str, int]:
    """One member's jobs created in [since, until), counted by state (every state named)."""
    rows = session.execute(
        select(jobs.c.state, func.count())
        .where(
            jobs.c.org_id == org.id,
            jobs.c.user_id == user_id,
            jobs.c.created_at >= since,
            jobs.c.created_at < until,
        )
        .group_by(jobs.c.state)
    ).tuples()
    counts = dict.fromkeys(ALL_STATES, 0)
    for state, count in rows:
        counts[str(state)] = int(count)
    return counts


def active_members(session: Session, org: Organization, *, since: datetime, until: datetime) -> int:
    """Distinct people who submitted a job in [since, until) (held or rejected ones too:
    they used the service)."""
    return int(
        session.scalar(
            select(func.count(func.distinct(jobs.c.user_id))).where(
                jobs.c.org_id == org.id, jobs.c.created_at >= since, jobs.c.created_at < until
            )
        )
        or 0
    )


def member_count(session: Session, org: Organization) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Membership).where(Membership.org_id == org.id)
        )
        or 0
    )


PERIODS: Final = ("day", "week", "month")
MAX_PERIODS: Final = 400


def periods(since: datetime, until: datetime, period: str) -> list[tuple[datetime, datetime]]:
    """[since, until) cut at UTC calendar boundaries (days, ISO weeks from Monday, months);
    the first and last pieces are clipped to the window. ValueError past `MAX_PERIODS`."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}")
    out: list[tuple[datetime, datetime]] = []
    start = since
    while start < until:
        day = start.replace(hour=0, minute=0, second=0, microsecond=0)
        if period == "day":
            boundary = day + timedelta(days=1)
        elif period == "week":
            boundary = day + timedelta(days=7 - day.weekday())
        else:
            first = day.replace(day=1)
            boundary = first.replace(
                year=first.year + first.month // 12, month=first.month % 12 + 1
            )
        end = min(boundary, until)
        out.append((start, end))
        if len(out) > MAX_PERIODS:
            raise ValueError(f"the window holds more than {MAX_PERIODS} {period}s")
        start = end
    return out


# ----------------------------------------------------------------- scrape-time counts


def jobs_by_state(session: Session, states: Sequence[str] | None = None) -> dict[str, int]:
    """Jobs per state across all organizations: one grouped index-only scan.

    `states` narrows the count to those states. The open states are an index-only scan
    of the partial `ix_jobs_org_open`, a few rows however large the ledger (0.2 ms at
    100k jobs); the final states are nearly the whole ledger (about 50 ms at 100k jobs),
    which is why api.metrics reads them less often.
    """
    counts = {state: 0 for state in (ALL_STATES if states is None else states)}
    stmt = select(jobs.c.state, func.count()).group_by(jobs.c.state)
    if states is not None:
        stmt = stmt.where(_is(jobs.c.state, *states))
    for state, n in session.execute(stmt):
        counts[str(state)] = int(n)
    return counts


def machines_by_status(session: Session, *, now: datetime | None = None) -> dict[str, int]:
    """Machines by status, approved ones split into online and offline (per org setting)."""
    now = now or utcnow()
    counts = {"pending": 0, "online": 0, "offline": 0, "rejected": 0}
    rows = session.execute(select(Machine.org_id, Machine.status, Machine.last_heartbeat_at)).all()
    org_ids = {r.org_id for r in rows if r.status == machines.MachineStatus.approved}
    cutoffs: dict[uuid.UUID, datetime] = {}
    if org_ids:
        for org_id, raw in session.execute(
            select(Organization.id, Organization.settings).where(Organization.id.in_(list(org_ids)))
        ):
            seconds = load_settings(dict(raw or {})).machines.offline_after_s
            cutoffs[org_id] = now - timedelta(seconds=seconds)
    for org_id, status, heartbeat in rows:
        if status == machines.MachineStatus.approved:
            # Same rule as orgs.machines.health_of: online while heartbeat >= cutoff.
            online = heartbeat is not None and heartbeat >= cutoffs.get(org_id, now)
            counts["online" if online else "offline"] += 1
        else:
            counts[status] = counts.get(status, 0) + 1
    return counts


def open_jobs_by_org(session: Session) -> dict[str, dict[str, int]]:
    """Open jobs (held, scheduled, running, cancelling) per org slug and state: a grouped
    index-only scan of the partial `ix_jobs_org_open`, a few rows however large the
    ledger. Orgs with none are absent."""
    org_key = jobs.c.org_id
    stmt = (
        select(Organization.slug, jobs.c.state, func.count())
        .select_from(jobs.join(Organization, Organization.id == org_key))
        .where(_is(jobs.c.state, *OPEN_STATES))
        .group_by(Organization.slug, jobs.c.state)
    )
    out: dict[str, dict[str, int]] = {}
    for slug, state, n in session.execute(stmt):
        out.setdefault(str(slug), dict.fromkeys(OPEN_STATES, 0))[str(state)] = int(n)
    return out


def machines_by_org(session: Session, *, now: datetime | None = None) -> dict[str, dict[str, int]]:
    """Machines per org slug, as `machines_by_status` counts them."""
    now = now or utcnow()
    rows = session.execute(
        select(
            Organization.slug, Organization.settings, Machine.status, Machine.last_heartbeat_at
        ).join(Organization, Organization.id == Machine.org_id)
    ).all()
    out: dict[str, dict[str, int]] = {}
    cutoffs: dict[str, datetime] = {}
    for slug, raw, status, heartbeat in rows:
        counts = out.setdefault(slug, {"pending": 0, "online": 0, "offline": 0, "rejected": 0})
        if status == machines.MachineStatus.approved:
            if slug not in cutoffs:
                seconds = load_settings(dict(raw or {})).machines.offline_after_s
                cutoffs[slug] = now - timedelta(seconds=seconds)
            online = heartbeat is not None and heartbeat >= cutoffs[slug]
            counts["online" if online else "offline"] += 1
        else:
            counts[status] = counts.get(status, 0) + 1
    return out


__all__ = [
    "ACTIVE_STATES",
    "ALL_STATES",
    "MachineActivity",
    "Overview",
    "TypeOverview",
    "Usage",
    "UserUsage",
    "active_members",
    "jobs",
    "jobs_by_state",
    "machine_activity",
    "machines_by_org",
    "machines_by_status",
    "member_count",
    "open_jobs_by_org",
    "overview",
    "periods",
    "usage",
    "window",
]
