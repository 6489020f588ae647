"""`cshare org overview` and `cshare usage`: how the organization's machines are used."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from api import format as fmt
from api.cli import config, machine_types, output
from api.cli.client import connect, require_org, seg
from api.cli.options import JsonOpt, OrgOpt
from api.cli.output import UsageProblem

SinceOpt = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Window start: an ISO time (2026-01-31T00:00) or an age like 7d, 12h, 30m. "
        "Default: 30 days ago.",
        show_default=False,
    ),
]
UntilOpt = Annotated[
    str | None,
    typer.Option("--until", help="Window end (same forms). Default: now.", show_default=False),
]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(value: str | None, *, now: datetime | None = None) -> str | None:
    """An ISO time as given, or an age (`7d`) turned into the ISO time that long ago."""
    if value is None:
        return None
    text = value.strip()
    unit = text[-1:].lower()
    if unit in _UNITS and text[:-1].replace(".", "", 1).isdigit():
        moment = (now or datetime.now(UTC)) - timedelta(seconds=float(text[:-1]) * _UNITS[unit])
        return moment.isoformat()
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageProblem(
            f"'{value}' is not a time; use ISO (2026-01-31T12:00) or an age like 7d or 12h."
        ) from None
    return text


def org_overview(
    since: SinceOpt = None,
    until: UntilOpt = None,
    idle_hours: Annotated[
        float, typer.Option("--idle-hours", min=0.01, help="Idle after this many hours.")
    ] = 24,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """The organization at a glance: machines, free capacity, jobs, compute time."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        body = client.get(
            f"/orgs/{seg(slug)}/overview",
            params={
                "since": parse_when(since),
                "until": parse_when(until),
                "idle_hours": idle_hours,
            },
        )
    if json_:
        output.print_json(body)
        return
    output.say(
        f"{slug}: {body['machines']} machines ({body['online']} online, "
        f"{body['pending']} pending), {body['free_slots']} of {body['slots']} slots free; "
        f"{body['active_jobs']} active jobs ({body['running_jobs']} running), "
        f"{body['queued_jobs']} queued."
    )
    for scaled in body.get("scaling", []):
        output.say(
            f"  {scaled['machine_type']}: elastic, {machine_types.describe(scaled)}; "
            f"{machine_types.machines_line(scaled)}"
        )
    for event in body.get("scaling_events", [])[:5]:
        output.say(
            f"  {output.when(event['at'])} {event['action']} {event['name']}: {event['reason']}"
        )
    output.say(
        f"Compute time {fmt.duration(body['compute_seconds'])} from {output.when(body['since'])} "
        f"to {output.when(body['until'])} UTC."
    )
    output.table(
        [
            "TYPE",
            "MACHINES",
            "ONLINE",
            "PENDING",
            "IDLE",
            "SLOTS",
            "FREE",
            "ACTIVE",
            "RUNNING",
            "QUEUED",
            "COMPUTE",
        ],
        (
            [
                t["machine_type"],
                t["machines"],
                t["online"],
                t["pending"],
                t["idle_machines"],
                t["slots"],
                t["free_slots"],
                t["active_jobs"],
                t["running_jobs"],
                t["queued_jobs"],
                fmt.duration(t["compute_seconds"]),
            ]
            for t in body.get("by_type", [])
        ),
        empty="No machines or jobs yet.",
    )


def usage(
    since: SinceOpt = None,
    until: UntilOpt = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Only this user name.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    me: Annotated[
        bool, typer.Option("--me", help="Only your own usage (any member; no admin needed).")
    ] = False,
    period: Annotated[
        str | None,
        typer.Option(
            "--period",
            help="Also per UTC day, week or month: compute, jobs, active members, storage "
            "added (with --csv: one row per period).",
            show_default=False,
        ),
    ] = None,
    csv_: Annotated[
        bool, typer.Option("--csv", help="CSV on stdout (per user, or per period).")
    ] = False,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Per-user usage over a window (admins), or your own with --me: compute time,
    jobs run and held, now; the org's storage and active members."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    if period is not None and period not in ("day", "week", "month"):
        raise UsageProblem(f"--period is day, week or month, not '{period}'.")
    if csv_ and json_:
        raise UsageProblem("Give --csv or --json, not both.")
    if me:
        if user is not None or period is not None:
            raise UsageProblem("--me takes neither --user nor --period.")
        _my_usage(slug, since, until, json_, csv_)
        return
    with connect(cfg) as client:
        body = client.get(
            f"/orgs/{seg(slug)}/usage",
            params={
                "since": parse_when(since),
                "until": parse_when(until),
                "user": user,
                "limit": limit,
                "period": period,
                "format": "csv" if csv_ else None,
            },
        )
    if csv_:
        sys.stdout.write(str(body))
        return
    if json_:
        output.print_json(body)
        return
    output.table(
        ["USER", "COMPUTE", "JOBS RUN", "JOBS HELD", "RUNNING", "ACTIVE", "QUEUED"],
        (
            [
                u["name"],
                fmt.duration(u["compute_seconds"]),
                u["jobs_run"],
                u["jobs_held"],
                u["running_now"],
                u["active_now"],
                u["queued_now"],
            ]
            for u in body.get("items", [])
        ),
        title=(
            f"Usage in {slug} from {output.when(body['since'])} to "
            f"{output.when(body['until'])} UTC: {fmt.duration(body['compute_seconds'])} of compute"
        ),
        empty="No usage in this window.",
    )
    if body.get("total", 0) > len(body.get("items", [])):
        output.note(f"Showing {len(body['items'])} of {body['total']} users; raise --limit.")
    storage = body["storage"]
    output.say(f"active members: {body['active_members']} of {body['members']} submitted jobs")
    output.say(
        f"storage now:    {fmt_bytes(storage['used_bytes'])} (datasets "
        f"{fmt_bytes(storage['datasets_bytes'])}, code bundles "
        f"{fmt_bytes(storage['bundles_bytes'])}); added in the window: datasets "
        f"{fmt_bytes(storage['datasets_added_bytes'])}, bundles "
        f"{fmt_bytes(storage['bundles_added_bytes'])}"
    )
    if body.get("periods") is not None:
        output.table(
            ["FROM", "TO", "COMPUTE", "JOBS RUN", "ACTIVE", "DATASETS +", "BUNDLES +"],
            (
                [
                    output.when(p["start"]),
                    output.when(p["end"]),
                    fmt.duration(p["compute_seconds"]),
                    p["jobs_run"],
                    p["active_members"],
                    fmt_bytes(p["datasets_added_bytes"]),
                    fmt_bytes(p["bundles_added_bytes"]),
                ]
                for p in body["periods"]
            ),
            title=f"Per {period}",
        )


def _my_usage(
    slug: str, since: str | None, until: str | None, json_: bool, csv_: bool = False
) -> None:
    with connect() as client:
        body = client.get(
            f"/orgs/{seg(slug)}/usage/me",
            params={
                "since": parse_when(since),
                "until": parse_when(until),
                "format": "csv" if csv_ else None,
            },
        )
    if csv_:
        sys.stdout.write(str(body))
        return
    if json_:
        output.print_json(body)
        return
    output.say(
        f"Your usage in {slug} from {output.when(body['since'])} to "
        f"{output.when(body['until'])} UTC"
    )
    output.say(f"compute:  {fmt.duration(body['compute_seconds'])}")
    output.say(
        f"jobs:     {body['jobs_run']} run, {body['jobs_held']} held for a slot; now "
        f"{body['running_now']} running, {body['queued_now']} queued"
    )
    output.say(f"storage:  {fmt_bytes(body['storage_bytes'])} in the datasets you created")
    by_state = {k: v for k, v in body.get("jobs_by_state", {}).items() if v}
    output.table(
        ["STATE", "JOBS"],
        ([state, count] for state, count in sorted(by_state.items())),
        title="Jobs created in the window, by state",
        empty="No jobs created in this window.",
    )


def fmt_bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
