"""`cshare org request-join`, `cshare org join-requests ...` and `cshare org logo ...`:
asking to rejoin an organization, deciding such requests, the organization's logo."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from api.cli import config, output
from api.cli.client import connect, require_org, seg
from api.cli.members import RoleName
from api.cli.options import JsonOpt, OrgOpt
from api.cli.orgs import app as org_app
from api.cli.output import CliError

MAX_LOGO_BYTES = 1 << 20
# What the server accepts, by content; the type sent only has to be one of these.
LOGO_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
LOGO_TYPES[".webp"] = "image/webp"

requests_app = typer.Typer(
    help="Requests to rejoin the organization (admins): list, approve, deny.",
    invoke_without_command=True,
)
logo_app = typer.Typer(help="The organization's logo (PNG, JPEG or WebP, at most 1 MB).")
org_app.add_typer(requests_app, name="join-requests")
org_app.add_typer(requests_app, name="requests", hidden=True)  # API.md's name for it
org_app.add_typer(logo_app, name="logo")


class StatusName(StrEnum):
    pending = "pending"
    approved = "approved"
    denied = "denied"
    all = "all"


@org_app.command("request-join")
def request_join(
    slug: Annotated[str, typer.Argument(metavar="SLUG", help="The organization you left.")],
    note: Annotated[
        str | None, typer.Option("--note", help="A message for its admins (optional).")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Ask to rejoin an organization you left or were removed from."""
    with connect() as client:
        body = client.post(f"/orgs/{seg(slug)}/join-requests", json={"note": note})
    if json_:
        output.print_json(body)
    else:
        output.say(str(body.get("detail", "Request received.")))
        output.note("See the answer with `cshare org my-join-requests`.")


@org_app.command("my-join-requests")
def my_join_requests(json_: JsonOpt = False) -> None:
    """Your requests to rejoin organizations and their answers."""
    with connect() as client:
        body = client.get("/me/join-requests")
    if output.printed_as_json(body, json_):
        return
    output.table(
        ["ORG", "STATUS", "ROLE", "ASKED", "DECIDED", "REASON"],
        (
            [
                r["org"],
                r["status"],
                r.get("role") or "",
                output.when(r["created_at"]),
                output.when(r.get("decided_at")),
                r.get("reason") or "",
            ]
            for r in body.get("items", [])
        ),
        empty="No requests to rejoin.",
    )


@requests_app.callback()
def list_requests(
    ctx: typer.Context,
    status: Annotated[
        StatusName, typer.Option("--status", help="Which requests to list.")
    ] = StatusName.pending,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List requests to rejoin (pending by default); see the approve and deny commands."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        body = client.get(
            f"/orgs/{seg(slug)}/join-requests", params={"status": status.value, "limit": 1000}
        )
    if output.printed_as_json(body, json_):
        return
    output.table(
        ["ID", "USER", "STATUS", "ASKED", "NOTE"],
        (
            [
                r["id"],
                r["user"]["name"],
                r["status"],
                output.when(r["created_at"]),
                r.get("note") or "",
            ]
            for r in body.get("items", [])
        ),
        title=f"Requests to rejoin {slug} ({status.value})",
        empty="No requests.",
    )


RequestArg = Annotated[str, typer.Argument(metavar="ID", help="The request's id.")]


def _decided(body: dict[str, Any], json_: bool, verb: str) -> None:
    if json_:
        output.print_json(body)
        return
    role = f" as {body['role']}" if body.get("role") else ""
    output.say(f"{verb} the request of {body['user']['name']}{role}; they are told by e-mail.")


@requests_app.command("approve")
def approve(
    request_id: RequestArg,
    role: Annotated[RoleName, typer.Option("--role", help="Their role on rejoining.")] = (
        RoleName.member
    ),
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Approve a request: the user becomes a member again with --role."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        body = client.post(
            f"/orgs/{seg(slug)}/join-requests/{seg(request_id)}/approve",
            json={"role": role.value},
        )
    _decided(body, json_, "Approved")


@requests_app.command("deny")
def deny(
    request_id: RequestArg,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Told to the user (optional).")
    ] = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Deny a request (they may ask again after a day; remove with --no-rejoin to stop that)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        body = client.post(
            f"/orgs/{seg(slug)}/join-requests/{seg(request_id)}/deny", json={"reason": reason}
        )
    _decided(body, json_, "Denied")


@logo_app.command("set")
def logo_set(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", exists=True, dir_okay=False, readable=True)
    ],
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Upload the logo (admins): PNG, JPEG or WebP, at most 1 MB; stored re-encoded."""
    size = file.stat().st_size
    if size > MAX_LOGO_BYTES:
        raise CliError(f"{file} is {size} bytes; a logo may be at most {MAX_LOGO_BYTES} (1 MB).")
    cfg = config.effective()
    slug = require_org(cfg, org)
    content_type = LOGO_TYPES.get(file.suffix.lower(), "application/octet-stream")
    with connect(cfg) as client:
        body = client.put(
            f"/orgs/{seg(slug)}/logo",
            content=file.read_bytes(),
            headers={"Content-Type": content_type},
        )
    if json_:
        output.print_json(body)
    else:
        output.say(f"Logo of '{slug}' set ({body['width']}x{body['height']} PNG).")


@logo_app.command("remove")
def logo_remove(org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Remove the logo (admins)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        client.delete(f"/orgs/{seg(slug)}/logo")
    if json_:
        output.print_json({"removed": True, "org": slug})
    else:
        output.say(f"Logo of '{slug}' removed.")
