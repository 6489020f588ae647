"""`cshare invite ...`: invitation codes and links, and accepting one."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from api.cli import config, output
from api.cli.client import connect, read_org, require_org, seg
from api.cli.lookup import invitation_code
from api.cli.members import RoleName
from api.cli.options import JsonOpt, OrgOpt
from api.cli.output import UsageProblem

# The server's defaults, repeated for --help (the org's settings may change them).
DEFAULT_EXPIRY_DAYS = 7
DEFAULT_MAX_USES = 1

app = typer.Typer(
    help=(
        "Invite people into an organization.\n\n"
        f"Defaults: an invitation expires after {DEFAULT_EXPIRY_DAYS} days and its code or "
        f"link serves {DEFAULT_MAX_USES} person, unless the creator passes --expires-in-hours "
        "/ --max-uses / --unlimited, or the org's admins change the settings "
        "invitations.default_expiry_hours and invitations.default_max_uses."
    ),
    no_args_is_help=True,
)


@app.command("create")
def create(
    role: Annotated[
        RoleName | None, typer.Option("--role", help="Role on joining (server default member).")
    ] = None,
    expires_in_hours: Annotated[
        int | None,
        typer.Option(
            "--expires-in-hours",
            min=1,
            help=f"Lifetime (default: the org's setting, {DEFAULT_EXPIRY_DAYS * 24} h = "
            f"{DEFAULT_EXPIRY_DAYS} days unless changed).",
        ),
    ] = None,
    max_uses: Annotated[
        int | None,
        typer.Option(
            "--max-uses",
            min=1,
            help=f"How many people may use it (default: the org's setting, {DEFAULT_MAX_USES} "
            "unless changed).",
        ),
    ] = None,
    unlimited: Annotated[
        bool, typer.Option("--unlimited", help="Any number of people until it expires.")
    ] = False,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create an invitation; prints its code and link once."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    payload: dict[str, Any] = {}
    if role is not None:
        payload["role"] = role.value
    if expires_in_hours is not None:
        payload["expires_in_hours"] = expires_in_hours
    if unlimited and max_uses is not None:
        raise UsageProblem("Give --max-uses or --unlimited, not both.")
    if max_uses is not None:
        payload["max_uses"] = max_uses
    elif unlimited:
        payload["max_uses"] = None
    with connect(cfg) as client:
        body = client.post(f"/orgs/{seg(slug)}/invitations", json=payload)
    if json_:
        output.print_json(body)
        return
    output.secret("Code", str(body.get("code")), "Shown once: send the code or link to the person.")
    if body.get("link"):
        output.say(f"Link: {body['link']}")
    output.say(f"They join with: cshare invite accept {body.get('code')}")


def _state(inv: dict[str, Any]) -> str:
    if inv.get("state"):
        return str(inv["state"])
    return "revoked" if inv.get("revoked_at") else "open"


@app.command("list")
def list_(org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """List the organization's invitations (never their codes)."""
    _slug, page = read_org(org, "invitations", every_page=True)
    if output.printed_as_json(page, json_):
        return
    items = page["items"]
    rows = []
    for inv in items:
        max_uses = inv.get("max_uses")
        uses = f"{inv.get('uses', 0)}/{max_uses if max_uses is not None else 'unlimited'}"
        rows.append(
            [
                inv.get("id"),
                inv.get("prefix"),
                inv.get("role"),
                uses,
                output.when(inv.get("expires_at")),
                _state(inv),
            ]
        )
    output.table(
        ["ID", "PREFIX", "ROLE", "USES", "EXPIRES", "STATE"], rows, empty="No invitations."
    )


@app.command("revoke")
def revoke(
    invitation_id: Annotated[str, typer.Argument(metavar="ID", help="The invitation's id.")],
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Revoke an invitation so nobody else can use it."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        client.delete(f"/orgs/{seg(slug)}/invitations/{seg(invitation_id)}")
    if json_:
        output.print_json({"revoked": invitation_id, "org": slug})
    else:
        output.say(f"Invitation {invitation_id} revoked.")


def _joined_slug(body: Any) -> str | None:
    """The org slug in an accept response, whichever shape the server chose."""
    if not isinstance(body, dict):
        return None
    org = body.get("org") or body.get("organization")
    if isinstance(org, dict) and isinstance(org.get("slug"), str):
        return str(org["slug"])
    if isinstance(org, str):
        return org
    slug = body.get("slug")
    return slug if isinstance(slug, str) else None


@app.command("accept")
def accept(
    code: Annotated[str, typer.Argument(metavar="CODE", help="The code, or the whole link.")],
    json_: JsonOpt = False,
) -> None:
    """Join an organization with an invitation code or link."""
    cfg = config.effective()
    with connect(cfg) as client:
        body = client.post(f"/invitations/{seg(invitation_code(code))}/accept")
    slug = _joined_slug(body)
    # Someone joining their first org wants to work in it right away.
    if slug and not config.load().org:
        config.update(org=slug)
    if json_:
        output.print_json(body)
        return
    role = body.get("role") if isinstance(body, dict) else None
    joined = f"You joined '{slug}'" if slug else "Invitation accepted"
    output.say(joined + (f" as {role}." if role else "."))
    if slug and config.effective().org != slug:
        output.note(f"Work in it with `cshare org use {slug}` or --org {slug}.")
