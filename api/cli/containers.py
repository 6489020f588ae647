"""`cshare job run --image REF -- COMMAND...` (a command in a container, no flow to
write) and `cshare registry add|list|remove` (the organization's private registries)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from api.cli import config, output
from api.cli.client import connect, require_org, seg
from api.cli.jobs import _describe, _wait, parse_inputs
from api.cli.options import JsonOpt, OrgOpt, YesOpt
from api.cli.output import UsageProblem

registry_app = typer.Typer(
    help="Private Docker registries of the organization (admins): logins for images.",
    no_args_is_help=True,
)


def run(
    command: Annotated[
        list[str], typer.Argument(metavar="-- COMMAND [ARG...]", help="What to run in the image.")
    ],
    image: Annotated[str, typer.Option("--image", help="The image: [HOST/]NAME[:TAG].")],
    input_: Annotated[
        list[str] | None,
        typer.Option("--input", help="DATASET[@VERSION], read-only at /inputs/DATASET."),
    ] = None,
    output_: Annotated[
        str | None,
        typer.Option("--output", help="DATASET that receives /outputs as a new version."),
    ] = None,
    machine_type: Annotated[str | None, typer.Option("--machine-type")] = None,
    memory: Annotated[int | None, typer.Option("--memory", help="Memory in MB.")] = None,
    cpus: Annotated[float | None, typer.Option("--cpus", help="CPU cores.")] = None,
    runtime: Annotated[int | None, typer.Option("--runtime", help="Max runtime in s.")] = None,
    priority: Annotated[int, typer.Option("--priority", help="Higher runs first.")] = 0,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job is over.")] = False,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Run a command in a container image on one of the organization's machines."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    body: dict[str, Any] = {
        "image": image,
        "command": list(command),
        "inputs": parse_inputs(input_),
        "outputs": [output_] if output_ else [],
        "priority": priority,
        "resources": {"memory_mb": memory, "max_runtime_s": runtime},
    }
    if machine_type:
        body["machine_type"] = machine_type
    if cpus is not None:
        body["cpus"] = cpus
    with connect(cfg) as client:
        job = client.post(f"/orgs/{seg(slug)}/jobs", json=body)
        if wait:
            if not json_:
                output.say(_describe(job))
            job = _wait(client, slug, str(job["id"]))
    if json_:
        output.print_json(job)
    else:
        output.say(_describe(job))
        digest = (job.get("image") or {}).get("digest")
        if digest:
            output.say(f"Image: {image}@{digest}")
    if wait and job.get("state") != "completed":
        raise typer.Exit(1)


@registry_app.command("add")
def add(
    registry: Annotated[
        str, typer.Argument(metavar="HOST[/NAMESPACE]", help="e.g. myacr.azurecr.io/team.")
    ],
    username: Annotated[str, typer.Option("--username", "-u")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Add a registry login (or replace it); the password only from standard input."""
    if not password_stdin:
        raise UsageProblem("Give the password on standard input with --password-stdin.")
    password = sys.stdin.read().rstrip("\r\n")
    if not password:
        raise UsageProblem("Expected the password on standard input, got nothing.")
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        body = client.post(
            f"/orgs/{seg(slug)}/registries",
            json={"registry": registry, "username": username, "password": password},
        )
    if json_:
        output.print_json(body)
    else:
        output.say(
            f"Registry {body.get('registry')} (user {body.get('username')}) set in '{slug}'."
        )


@registry_app.command("list")
def list_(org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """The registries and their usernames (passwords are never shown)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        items = client.get(f"/orgs/{seg(slug)}/registries")
    if output.printed_as_json(items, json_):
        return
    output.table(
        ["REGISTRY", "USERNAME", "UPDATED", "ID"],
        (
            [r.get("registry"), r.get("username"), output.when(r.get("updated_at")), r.get("id")]
            for r in items
        ),
        title=f"Registries of {slug}",
        empty="No registries.",
    )


@registry_app.command("remove")
def remove(
    registry: Annotated[str, typer.Argument(metavar="HOST[/NAMESPACE]|ID")],
    org: OrgOpt = None,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Remove a registry and its stored password."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    if not yes:
        typer.confirm(f"Remove registry {registry} from '{slug}'?", abort=True)
    with connect(cfg) as client:
        client.delete(f"/orgs/{seg(slug)}/registries/{registry}")
    if json_:
        output.print_json({"removed": registry, "org": slug})
    else:
        output.say(f"Removed registry {registry} from '{slug}'.")
