"""`cshare machine-type ...`: the organization's machine types and their elastic capacity.

cshare machine-type list
cshare machine-type show TYPE
cshare machine-type scale TYPE --provider process --min 1 --max 3 --grace 30s
cshare machine-type scale TYPE --provider docker --engine-url URL --image IMAGE
cshare machine-type detach TYPE
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from api import format as fmt
from api.cli import config, output
from api.cli.client import connect, read_org, require_org, seg
from api.cli.options import JsonOpt, OrgOpt, YesOpt
from api.cli.output import UsageProblem

app = typer.Typer(help="Machine types and their elastic capacity.", no_args_is_help=True)

TypeArg = Annotated[str, typer.Argument(metavar="TYPE", help="The machine type's name.")]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Provider(StrEnum):
    process = "process"
    docker = "docker"


def parse_seconds(value: str) -> int:
    """`900`, `30s`, `15m`, `2h`, `1d` -> seconds."""
    text = value.strip().lower()
    unit = text[-1:] if text[-1:] in _UNITS else "s"
    number = text[:-1] if text[-1:] in _UNITS else text
    if not number.isdigit():
        raise UsageProblem(f"'{value}' is not a duration; use e.g. 30s, 15m, 2h or 900.")
    return int(number) * _UNITS[unit]


def describe(s: dict[str, Any]) -> str:
    where = f" on {s['engine_url']} ({s['image']})" if s.get("provider") == "docker" else ""
    state = " (detached: draining)" if s.get("detached") else ""
    return (
        f"{s['provider']}{where}: min {s['min_scale']}, max {s['max_scale']}, grace "
        f"{fmt.duration(s['grace_period_s'])}, {s['slots']} slot(s) each{state}"
    )


def machines_line(s: dict[str, Any]) -> str:
    phases: dict[str, int] = {}
    for m in s.get("machines", []):
        phases[m["phase"]] = phases.get(m["phase"], 0) + 1
    parts = ", ".join(f"{n} {p}" for p, n in sorted(phases.items()))
    return f"{len(s.get('machines', []))} machines" + (f" ({parts})" if parts else "")


@app.command("list")
def list_(org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """The machine types, their job limits and their capacity provider, if any."""
    slug, body = read_org(org, "machine-types")
    if output.printed_as_json(body, json_):
        return
    output.table(
        ["TYPE", "MAX JOBS", "PER USER", "SCALING", "MACHINES"],
        (
            [
                t["name"],
                t["max_concurrent_jobs"],
                t["per_user_quota"],
                describe(t["scaling"]) if t.get("scaling") else "manual (agents)",
                machines_line(t["scaling"]) if t.get("scaling") else "",
            ]
            for t in body["items"]
        ),
        title=f"Machine types of {slug}",
        empty="No machine types.",
    )


@app.command("show")
def show(machine_type: TypeArg, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """A type's capacity provider and the machines it runs now."""
    slug, s = read_org(org, "machine-types", machine_type, "scaling")
    if output.printed_as_json(s, json_):
        return
    output.say(f"{slug} / {machine_type}: {describe(s)}; {machines_line(s)}.")
    output.table(
        ["NAME", "PHASE", "ONLINE", "RUNNING", "STARTED", "IDLE SINCE"],
        (
            [
                m["name"],
                m["phase"],
                "yes" if m["online"] else "no",
                m["running_jobs"],
                output.when(m["started_at"]),
                output.when(m["idle_since"]) if m.get("idle_since") else "",
            ]
            for m in s["machines"]
        ),
        title="Machines",
        empty="No machines running.",
    )


@app.command("scale")
def scale(
    machine_type: TypeArg,
    provider: Annotated[
        Provider, typer.Option("--provider", help="process (this host) or docker (an engine).")
    ],
    min_scale: Annotated[int, typer.Option("--min", min=0, help="Machines always kept.")] = 0,
    max_scale: Annotated[int, typer.Option("--max", min=1, help="Machines at most.")] = 5,
    grace: Annotated[
        str, typer.Option("--grace", help="Idle time before a machine stops: 30s, 15m, 2h.")
    ] = "15m",
    slots: Annotated[int, typer.Option("--slots", min=1, help="Jobs per machine.")] = 1,
    engine_url: Annotated[
        str | None, typer.Option("--engine-url", help="docker: the engine's URL.")
    ] = None,
    image: Annotated[str | None, typer.Option("--image", help="docker: the agent image.")] = None,
    network: Annotated[
        str | None, typer.Option("--network", help="docker: the network (default host).")
    ] = None,
    flows_dir: Annotated[
        str | None, typer.Option("--flows-dir", help="process: where path deployments' code is.")
    ] = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Attach (or change) the type's capacity provider (admins)."""
    body: dict[str, Any] = {
        "provider": provider.value,
        "min_scale": min_scale,
        "max_scale": max_scale,
        "grace_period_s": parse_seconds(grace),
        "slots": slots,
    }
    extra = {"engine_url": engine_url, "image": image, "network": network, "flows_dir": flows_dir}
    body.update({k: v for k, v in extra.items() if v is not None})
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        s = client.put(f"/orgs/{seg(slug)}/machine-types/{seg(machine_type)}/scaling", json=body)
    if json_:
        output.print_json(s)
    else:
        output.say(f"{slug} / {machine_type}: {describe(s)}.")


@app.command("detach")
def detach(
    machine_type: TypeArg, org: OrgOpt = None, yes: YesOpt = False, json_: JsonOpt = False
) -> None:
    """Detach the type's capacity provider (admins): its machines drain and stop."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    if not yes:
        typer.confirm(
            f"Detach the capacity provider of '{machine_type}' in '{slug}'? Its machines "
            "stop once their jobs end.",
            abort=True,
        )
    with connect(cfg) as client:
        s = client.delete(f"/orgs/{seg(slug)}/machine-types/{seg(machine_type)}/scaling")
    if json_:
        output.print_json(s)
    else:
        output.say(f"Detached: {machines_line(s)} drain and stop.")
