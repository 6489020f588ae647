"""When a schedule fires: cron, interval and rrule specs, checked, and their fire times.

Cron is read by Prefect's vendored croniter, interval and rrule by Prefect's own
server-side schedule models, so the control plane's dispatcher and Prefect's scheduler
compute the same fire times from one spec.
"""

from __future__ import annotations

import importlib
import math
import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from flows.models import Schedule
from policies.errors import Invalid

__all__ = [
    "KINDS",
    "ScheduleSpec",
    "fires",
    "next_fires",
    "spec_of",
    "validate_cron",
    "validate_spec",
    "validate_timezone",
]

Kind = Literal["cron", "interval", "rrule"]
KINDS: Final = ("cron", "interval", "rrule")
# Prefect's default anchor for an interval schedule given none is "now" at creation;
# ours is fixed so that re-registering a file does not shift the fire times.
DEFAULT_ANCHOR: Final = datetime(2020, 1, 1, tzinfo=UTC)
MIN_INTERVAL_S: Final = 60.0  # the dispatcher looks every few seconds; less is abuse

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


@dataclass(frozen=True)
class ScheduleSpec:
    """When a schedule fires (validated: build with ``validate_spec``)."""

    kind: Kind = "cron"
    cron: str = ""
    interval_s: float | None = None
    anchor_date: datetime | None = None
    rrule: str | None = None
    timezone: str = "UTC"

    def prefect_schedule(self) -> dict[str, Any]:
        """The `schedule` object of Prefect's deployment-schedule API."""
        if self.kind == "interval":
            assert self.interval_s is not None
            return {
                "interval": self.interval_s,
                "anchor_date": (self.anchor_date or DEFAULT_ANCHOR).isoformat(),
                "timezone": self.timezone,
            }
        if self.kind == "rrule":
            return {"rrule": self.rrule, "timezone": self.timezone}
        return {"cron": self.cron, "timezone": self.timezone}

    def describe(self) -> str:
        if self.kind == "interval":
            return f"every {self.interval_s:g}s"
        if self.kind == "rrule":
            return f"rrule {self.rrule}"
        return f"cron '{self.cron}'"


def validate_spec(
    *,
    kind: str = "cron",
    cron: str | None = None,
    interval_s: float | None = None,
    anchor_date: datetime | None = None,
    rrule: str | None = None,
    timezone: str = "UTC",
) -> ScheduleSpec:
    """A checked ScheduleSpec: exactly the fields of its kind, each valid (422 naming
    the field otherwise)."""
    timezone = validate_timezone(timezone)
    given = {
        "cron": cron is not None and cron != "",
        "interval": interval_s is not None,
        "rrule": rrule is not None and rrule != "",
    }
    if kind not in KINDS:
        raise Invalid(f"Unknown schedule kind '{kind}' (known: {', '.join(KINDS)}).", field="kind")
    others = [k for k, present in given.items() if present and k != kind]
    if others:
        raise Invalid(
            f"A {kind} schedule takes no {others[0]} (give one of cron, interval, rrule).",
            field=others[0] if others[0] != "interval" else "interval_s",
        )
    if kind == "cron":
        return ScheduleSpec("cron", cron=validate_cron(cron or ""), timezone=timezone)
    if kind == "interval":
        if interval_s is None or not math.isfinite(interval_s) or interval_s < MIN_INTERVAL_S:
            raise Invalid(
                f"An interval schedule needs interval_s of at least {MIN_INTERVAL_S:g} seconds.",
                field="interval_s",
            )
        if anchor_date is not None and anchor_date.tzinfo is None:
            # Naive: in the schedule's time zone, as Prefect reads it.
            anchor_date = anchor_date.replace(tzinfo=zoneinfo.ZoneInfo(timezone))
        anchor = anchor_date.astimezone(UTC) if anchor_date is not None else None
        return ScheduleSpec(
            "interval", interval_s=float(interval_s), anchor_date=anchor, timezone=timezone
        )
    text = (rrule or "").strip()
    try:
        _prefect_schedules().RRuleSchedule(rrule=text, timezone=timezone)
    except Exception as exc:  # pydantic's ValidationError or dateutil's ValueError
        raise Invalid(f"'{text}' is not a valid RRule: {_first_line(exc)}", field="rrule") from None
    if len(text) > 4000:
        raise Invalid("RRules are at most 4000 characters.", field="rrule")
    return ScheduleSpec("rrule", rrule=text, timezone=timezone)


def _first_line(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)  # pydantic's ValidationError: its first message
    if callable(errors):
        found = errors()
        if found:
            return str(found[0].get("msg", ""))[:200]
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def _prefect_schedules() -> Any:
    # Prefect's server-side schedule models: the fire times its scheduler would compute.
    return importlib.import_module("prefect.server.schemas.schedules")


def spec_of(sched: Schedule) -> ScheduleSpec:
    kind: Kind = sched.kind if sched.kind in KINDS else "cron"  # type: ignore[assignment]
    return ScheduleSpec(
        kind=kind,
        cron=sched.cron or "",
        interval_s=sched.interval_s,
        anchor_date=sched.anchor_date,
        rrule=sched.rrule,
        timezone=sched.timezone,
    )


def fires(
    spec: ScheduleSpec, after: datetime, until: datetime, *, limit: int = 20
) -> list[datetime]:
    """The schedule's fire times in (after, until], UTC, at most `limit`."""
    if spec.kind == "cron":
        return next_fires(spec.cron, spec.timezone, after, until, limit=limit)
    models = _prefect_schedules()
    if spec.kind == "interval":
        model = models.IntervalSchedule(
            interval=timedelta(seconds=spec.interval_s or MIN_INTERVAL_S),
            anchor_date=spec.anchor_date or DEFAULT_ANCHOR,
            timezone=spec.timezone,
        )
    else:
        model = models.RRuleSchedule(rrule=spec.rrule, timezone=spec.timezone)
    # Prefect's start is inclusive; ours is not. Sync generator of Prefect 3.8.8 (pinned):
    # its public get_dates is the same, wrapped in a coroutine.
    out: list[datetime] = []
    for date in model._get_dates_generator(n=limit + 1, start=after, end=until):
        fire = datetime.fromtimestamp(date.timestamp(), UTC)
        if after < fire <= until:
            out.append(fire)
    return sorted(out)[:limit]
