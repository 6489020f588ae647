"""`cshare member ...`: who belongs to the organization, with which role."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from api.cli import config, output
from api.cli.client import connect, read_org, require_org, seg
from api.cli.lookup import member_id
from api.cli.options import JsonOpt, OrgOpt, YesOpt

app = typer.Typer(help="Members of an organization and their roles.", no_args_is_help=True)


class RoleName(StrEnum):
    """Mirrors policies.permissions.Role; the CLI imports no server code."""

    owner = "owner"
    admin = "admin"
    member = "member"


UserArg = Annotated[str, typer.Argument(metavar="USER", help="A member's user name or user id.")]


@app.command("list")
def list_(org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """List the members."""
    slug, page = read_org(org, "members", every_page=True)
    if output.printed_as_json(page, json_):
        return
    items = page["items"]
    # The server tells admins who has two-factor (null for everyone else): a column then.
    show_2fa = any(m.get("two_factor") is not None for m in items)
    output.table(
        ["NAME", "ROLE", *(["2FA"] if show_2fa else []), "JOINED", "USER ID"],
        (
            [
                m.get("user", {}).get("name"),
                m.get("role"),
                *([_two_factor(m.get("two_factor"))] if show_2fa else []),
                output.when(m.get("joined_at"), minutes=False),
                m.get("user", {}).get("id"),
            ]
            for m in items
        ),
        title=f"Members of {slug}",
        empty="No members.",
    )


def _two_factor(value: object) -> str:
    return {True: "on", False: "off"}.get(value, "") if isinstance(value, bool) else ""


@app.command("role")
def role(
    user: UserArg,
    new_role: Annotated[RoleName, typer.Argument(metavar="ROLE", help="owner, admin or member.")],
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Change a member's role (admins; only the owner can make admins)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        user_id, _ = member_id(client, slug, user)
        body = client.patch(
            f"/orgs/{seg(slug)}/members/{seg(user_id)}", json={"role": new_role.value}
        )
    if json_:
        output.print_json(body)
    else:
        output.say(f"{body.get('user', {}).get('name', user)} is now {body.get('role')}.")


@app.command("remove")
def remove(
    user: UserArg,
    no_rejoin: Annotated[
        bool,
        typer.Option(
            "--no-rejoin",
            help="Do not allow them to request to rejoin (an admin may still invite them).",
        ),
    ] = False,
    org: OrgOpt = None,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Remove a member from the organization."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        user_id, _ = member_id(client, slug, user)
        if not yes:
            typer.confirm(f"Remove {user} from '{slug}'?", abort=True)
        params = {"no_rejoin": "true"} if no_rejoin else None
        client.delete(f"/orgs/{seg(slug)}/members/{seg(user_id)}", params=params)
    if json_:
        output.print_json({"removed": user_id, "org": slug, "no_rejoin": no_rejoin})
    else:
        blocked = " They may not request to rejoin." if no_rejoin else ""
        output.say(f"Removed {user} from '{slug}'.{blocked}")
