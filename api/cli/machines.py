"""`cshare machine ...`: the organization's machines; approving, rejecting, removing."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from api import format as fmt
from api.cli import config, output
from api.cli.client import Client, connect, read_org, require_org, seg
from api.cli.lookup import is_uuid
from api.cli.options import JsonOpt, OrgOpt, YesOpt
from api.cli.output import CliError

app = typer.Typer(help="Machines shared with an organization.", no_args_is_help=True)

MachineArg = Annotated[str, typer.Argument(metavar="MACHINE", help="The machine's name or id.")]


def _find(client: Client, org: str, machine: str) -> dict[str, Any]:
    """A machine row from its id or its name (names are unique in an organization)."""
    if is_uuid(machine):
        body: dict[str, Any] = client.get(f"/orgs/{seg(org)}/machines/{seg(machine)}")
        return body
    for item in client.list_all(f"/orgs/{seg(org)}/machines"):
        if item.get("name") == machine:
            return item
    raise CliError(
        f"No machine named '{machine}' in '{org}'.",
        hint=f"See `cshare machine list --org {org}`; a machine id works too.",
    )


def _memory(hw: dict[str, Any]) -> str:
    mb = hw.get("memory_mb")
    return fmt.memory_mb(mb) if isinstance(mb, int | float) else ""


def _gpu(gpu: dict[str, Any]) -> str:
    name, mb = str(gpu.get("name")), gpu.get("memory_mb")
    return f"{name} ({fmt.memory_mb(mb)})" if isinstance(mb, int) else name


def _status(m: dict[str, Any]) -> str:
    status = str(m.get("status", ""))
    if status == "approved":
        return str(m.get("health", ""))
    return status


@app.command("list")
def list_(org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """List the machines: status (pending, online, offline, rejected), owner, load."""
    slug, page = read_org(org, "machines", every_page=True)
    if output.printed_as_json(page, json_):
        return
    items = page["items"]
    output.table(
        ["NAME", "TYPE", "STATUS", "OWNER", "RUNNING", "SLOTS", "CPUS", "MEMORY", "GPUS", "ID"],
        (
            [
                m.get("name"),
                m.get("machine_type"),
                _status(m),
                m.get("owner", {}).get("name"),
                m.get("running_jobs"),
                m.get("slots"),
                m.get("hardware", {}).get("cpu_count"),
                _memory(m.get("hardware", {})),
                m.get("hardware", {}).get("gpu_count"),
                m.get("id"),
            ]
            for m in items
        ),
        title=f"Machines of {slug}",
        empty="No machines yet: members share one with `cshare agent start`.",
    )


@app.command("show")
def show(machine: MachineArg, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Show one machine, its hardware and its health."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        m = _find(client, slug, machine)
    if json_:
        output.print_json(m)
        return
    hw = m.get("hardware", {})
    gpus = ", ".join(_gpu(g) for g in hw.get("gpus", []) if isinstance(g, dict))
    rows: list[list[Any]] = [
        ["Name", m.get("name")],
        ["Id", m.get("id")],
        ["Type", m.get("machine_type")],
        ["Status", f"{m.get('status')} {m.get('status_reason') or ''}".strip()],
        ["Health", m.get("health")],
        ["Owner", m.get("owner", {}).get("name")],
        ["Slots", f"{m.get('running_jobs')} running of {m.get('slots')}"],
        ["Work pool", m.get("work_pool")],
        ["CPUs", hw.get("cpu_count")],
        ["Memory", _memory(hw)],
        ["GPUs", gpus or "none"],
        ["OS", f"{hw.get('os', '')} {hw.get('os_release', '')}".strip()],
        ["Python", hw.get("python")],
        ["Docker", m.get("docker") or "no"],
        ["Registered", output.when(m.get("created_at"))],
        ["Last heartbeat", output.when(m.get("last_heartbeat_at"))],
    ]
    output.table(["FIELD", "VALUE"], rows, title=f"Machine {m.get('name')}")


@app.command("approve")
def approve(machine: MachineArg, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Approve a machine (admins): its agent starts taking jobs."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        m = _find(client, slug, machine)
        body = client.post(f"/orgs/{seg(slug)}/machines/{seg(str(m['id']))}/approve")
    if json_:
        output.print_json(body)
    else:
        output.say(f"Approved machine '{body.get('name')}'.")


@app.command("reject")
def reject(
    machine: MachineArg,
    reason: Annotated[str, typer.Option("--reason", help="Told to the machine's agent.")] = "",
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Reject a machine (admins): its agent stops and its runs are cancelled."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        m = _find(client, slug, machine)
        body = client.post(
            f"/orgs/{seg(slug)}/machines/{seg(str(m['id']))}/reject", json={"reason": reason}
        )
    if json_:
        output.print_json(body)
    else:
        output.say(f"Rejected machine '{body.get('name')}'.")


@app.command("remove")
def remove(
    machine: MachineArg, org: OrgOpt = None, yes: YesOpt = False, json_: JsonOpt = False
) -> None:
    """Remove a machine (yours; anyone's as an admin). Its runs are cancelled."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        m = _find(client, slug, machine)
        if not yes:
            typer.confirm(f"Remove machine '{m.get('name')}' from '{slug}'?", abort=True)
        client.delete(f"/orgs/{seg(slug)}/machines/{seg(str(m['id']))}")
    if json_:
        output.print_json({"removed": m.get("id"), "org": slug})
    else:
        output.say(f"Removed machine '{m.get('name')}'.")
