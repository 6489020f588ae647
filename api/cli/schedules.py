"""`cshare schedule ...`: recurring jobs (cron, interval, rrule) on the org's deployments."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from api.cli import config, output
from api.cli.client import connect, read_org, require_org, seg
from api.cli.jobs import parse_params
from api.cli.options import JsonOpt, OrgOpt
from api.cli.output import UsageProblem

app = typer.Typer(
    help="Recurring jobs: cron, interval or rrule schedules run as you.", no_args_is_help=True
)

ScheduleArg = Annotated[str, typer.Argument(metavar="SCHEDULE", help="The schedule id.")]


@app.command("create")
def create(
    deployment: Annotated[str, typer.Argument(help="The deployment's name.")],
    cron: Annotated[str | None, typer.Option("--cron", help="e.g. '*/15 * * * *'.")] = None,
    interval: Annotated[
        float | None, typer.Option("--interval", help="Seconds between runs (at least 60).")
    ] = None,
    anchor_date: Annotated[
        str | None,
        typer.Option("--anchor-date", help="ISO date-time an --interval counts from."),
    ] = None,
    rrule: Annotated[
        str | None, typer.Option("--rrule", help="e.g. 'FREQ=WEEKLY;BYDAY=MO;BYHOUR=9'.")
    ] = None,
    timezone: Annotated[str, typer.Option("--timezone", help="IANA zone.")] = "UTC",
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="key=value (value parsed as JSON if it can be)."),
    ] = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Run DEPLOYMENT on a schedule (one of --cron, --interval, --rrule); each run
    counts against your limits."""
    given = [(k, v) for k, v in (("cron", cron), ("interval_s", interval), ("rrule", rrule)) if v]
    if len(given) != 1:
        raise UsageProblem("Give exactly one of --cron, --interval or --rrule.")
    cfg = config.effective()
    slug = require_org(cfg, org)
    body: dict[str, Any] = {
        "deployment": deployment,
        given[0][0]: given[0][1],
        "timezone": timezone,
        "parameters": parse_params(param),
    }
    if anchor_date is not None:
        body["anchor_date"] = anchor_date
    with connect(cfg) as client:
        sched = client.post(f"/orgs/{seg(slug)}/schedules", json=body)
    if json_:
        output.print_json(sched)
    else:
        output.say(f"Schedule {sched['id']}: {deployment} {_when(sched)} ({timezone}).")


@app.command("list")
def list_(org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """List the organization's schedules."""
    slug, page = read_org(org, "schedules")
    if output.printed_as_json(page, json_):
        return
    output.table(
        ["ID", "DEPLOYMENT", "WHEN", "TIMEZONE", "ACTIVE", "USER", "PARAMETERS"],
        (
            [
                s.get("id"),
                s.get("deployment"),
                _when(s),
                s.get("timezone"),
                s.get("active"),
                s.get("user"),
                json.dumps(s.get("parameters") or {}),
            ]
            for s in page.get("items", [])
        ),
        title=f"Schedules in {slug}",
        empty="No schedules.",
    )


def _when(s: dict[str, Any]) -> str:
    if s.get("kind") == "interval":
        return f"every {s.get('interval_s'):g}s"
    if s.get("kind") == "rrule":
        return f"rrule {s.get('rrule')}"
    return f"cron '{s.get('cron')}'"


def _set_active(schedule_id: str, active: bool, org: str | None, json_: bool) -> None:
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        sched = client.patch(
            f"/orgs/{seg(slug)}/schedules/{seg(schedule_id)}", json={"active": active}
        )
    if json_:
        output.print_json(sched)
    else:
        output.say(f"Schedule {schedule_id} {'resumed' if active else 'paused'}.")


@app.command("pause")
def pause(schedule_id: ScheduleArg, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Stop creating runs until resumed."""
    _set_active(schedule_id, False, org, json_)


@app.command("resume")
def resume(schedule_id: ScheduleArg, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Create runs again."""
    _set_active(schedule_id, True, org, json_)


@app.command("delete")
def delete(schedule_id: ScheduleArg, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Delete a schedule (yours; admins any)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        client.delete(f"/orgs/{seg(slug)}/schedules/{seg(schedule_id)}")
    if json_:
        output.print_json({"deleted": schedule_id})
    else:
        output.say(f"Schedule {schedule_id} deleted.")
