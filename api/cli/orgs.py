"""`cshare org ...`: organizations, the current org, and their settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from api.cli import config, output
from api.cli.client import connect, require_org, seg
from api.cli.lookup import member_id
from api.cli.options import JsonOpt, OrgOpt, YesOpt
from api.cli.output import CliError, UsageProblem

app = typer.Typer(help="Organizations: create, choose, change, leave.", no_args_is_help=True)
settings_app = typer.Typer(
    help="An organization's settings and limits document.", no_args_is_help=True
)
app.add_typer(settings_app, name="settings")


def _org_lines(org: dict[str, Any]) -> None:
    output.say(f"{org.get('name')} ({org.get('slug')})")
    if org.get("description"):
        output.say(str(org["description"]))
    output.say(f"id:      {org.get('id')}")
    output.say(f"role:    {org.get('role') or '-'}")
    output.say(f"created: {output.when(org.get('created_at'))}")
    if org.get("contact_email"):
        output.say(f"contact: {org['contact_email']}")


def _forget_current(slug: str) -> None:
    """After leaving or deleting an org, stop pointing at it."""
    if config.load().org == slug:
        config.update(org=None)
        output.note(f"'{slug}' was your current organization; choose another with `org use`.")


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The organization's display name.")],
    slug: Annotated[
        str | None, typer.Option("--slug", help="URL name (default: from the name).")
    ] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    use: Annotated[bool, typer.Option("--use", help="Make it the current org.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Create an organization; you become its owner."""
    payload: dict[str, Any] = {"name": name}
    if slug is not None:
        payload["slug"] = slug
    if description is not None:
        payload["description"] = description
    with connect() as client:
        org = client.post("/orgs", json=payload)
    if use:
        config.update(org=org["slug"])
    if json_:
        output.print_json(org)
        return
    output.say(f"Created organization '{org['name']}' (slug {org['slug']}); you are its owner.")
    if not use:
        output.note(f"Make it your current org with `cshare org use {org['slug']}`.")


@app.command("list")
def list_(json_: JsonOpt = False) -> None:
    """The organizations you belong to (* marks the current one)."""
    cfg = config.effective()
    with connect(cfg) as client:
        body = client.get("/orgs")
    if json_:
        output.print_json(body)
        return
    output.table(
        ["", "SLUG", "NAME", "ROLE", "CREATED"],
        (
            [
                "*" if o.get("slug") == cfg.org else "",
                o.get("slug"),
                o.get("name"),
                o.get("role"),
                output.when(o.get("created_at"), minutes=False),
            ]
            for o in body.get("items", [])
        ),
        empty="You belong to no organization yet: `cshare org create NAME`, or accept an invite.",
    )


@app.command("show")
def show(org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Show one organization and your role in it."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        body = client.get(f"/orgs/{seg(slug)}")
    if json_:
        output.print_json(body)
    else:
        _org_lines(body)


@app.command("use")
def use(
    slug: Annotated[str, typer.Argument(metavar="SLUG", help="The organization's slug.")],
    json_: JsonOpt = False,
) -> None:
    """Make SLUG the current organization (checked with the server first)."""
    cfg = config.effective()
    with connect(cfg) as client:
        body = client.get(f"/orgs/{seg(slug)}")
    config.update(org=body["slug"])
    if json_:
        output.print_json(body)
    else:
        output.say(f"Current organization: {body['name']} ({body['slug']}).")
    if cfg.org_from_env and cfg.org != body["slug"]:
        output.note(f"CSHARE_ORG={cfg.org} is set and still overrides this.")


@app.command("update")
def update(
    name: Annotated[str | None, typer.Option("--name", help="A new display name.")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    contact_email: Annotated[
        str | None,
        typer.Option("--contact-email", help="Where members reach the admins ('' clears it)."),
    ] = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Change the organization's name, description or contact e-mail (admins)."""
    if name is None and description is None and contact_email is None:
        raise UsageProblem("Nothing to change: give --name, --description and/or --contact-email.")
    cfg = config.effective()
    slug = require_org(cfg, org)
    given = (("name", name), ("description", description), ("contact_email", contact_email))
    payload = {k: v for k, v in given if v is not None}
    with connect(cfg) as client:
        body = client.patch(f"/orgs/{seg(slug)}", json=payload)
    if json_:
        output.print_json(body)
    else:
        output.say(f"Updated '{body['slug']}'.")


@app.command("delete")
def delete(
    slug: Annotated[str, typer.Argument(metavar="SLUG", help="The organization's slug.")],
    confirm: Annotated[
        str | None,
        typer.Option("--confirm", help="The organization's exact name, to skip the prompt."),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Delete an organization and everything in it (owner only)."""
    with connect() as client:
        if confirm is None:
            org = client.get(f"/orgs/{seg(slug)}")
            output.note(
                f"This deletes '{org['name']}' ({slug}) with its members, machines, jobs and "
                "datasets. It cannot be undone."
            )
            confirm = typer.prompt("Type the organization's name to confirm")
            if confirm != org["name"]:
                raise CliError("The name does not match; nothing was deleted.")
        client.request("DELETE", f"/orgs/{seg(slug)}", json={"confirm": confirm})
    _forget_current(slug)
    if json_:
        output.print_json({"deleted": slug})
    else:
        output.say(f"Deleted organization '{slug}'.")


@app.command("leave")
def leave(org: OrgOpt = None, yes: YesOpt = False, json_: JsonOpt = False) -> None:
    """Leave an organization (an owner must transfer ownership first)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    if not yes:
        typer.confirm(f"Leave '{slug}'? You need a new invitation to come back", abort=True)
    with connect(cfg) as client:
        client.post(f"/orgs/{seg(slug)}/leave")
    _forget_current(slug)
    if json_:
        output.print_json({"left": slug})
    else:
        output.say(f"You left '{slug}'.")


@app.command("transfer")
def transfer(
    user: Annotated[
        str, typer.Argument(metavar="USER", help="The new owner: a member's user name or id.")
    ],
    org: OrgOpt = None,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Make another member the owner; you become an admin."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        user_id, _ = member_id(client, slug, user)
        if not yes:
            typer.confirm(f"Make {user} the owner of '{slug}'? You become an admin", abort=True)
        body = client.post(f"/orgs/{seg(slug)}/transfer-ownership", json={"user_id": user_id})
    if json_:
        output.print_json(body)
    else:
        output.say(f"{user} now owns '{slug}'; your role is {body.get('role', 'admin')}.")


# --------------------------------------------------------------------------- settings


@settings_app.command("get")
def settings_get(
    yaml_: Annotated[
        bool,
        typer.Option("--yaml", help="Print only the limits document, as YAML for `set`."),
    ] = False,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Show the organization's settings."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    path = f"/orgs/{seg(slug)}/settings"
    with connect(cfg) as client:
        if yaml_ and not json_:
            # The server renders the limits document itself, exactly as `set` reads it.
            text = client.get(path, headers={"Accept": "application/yaml"})
            typer.echo(str(text), nl=not str(text).endswith("\n"))
            return
        body = client.get(path)
    if json_:
        output.print_json(body)
    else:
        # YAML reads best for a nested document; plain text, never rich markup.
        typer.echo(yaml.safe_dump(body, sort_keys=False), nl=False)


def _read_settings_file(file: str) -> tuple[str, str]:
    """(content type, body) for a settings file: YAML goes as-is, JSON as JSON."""
    if file == "-":
        text, suffix = sys.stdin.read(), ""
    else:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageProblem(f"Cannot read {file}: {exc.strerror or exc}.") from None
        except UnicodeDecodeError:
            raise UsageProblem(f"{file} is not UTF-8 text.") from None
        suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "application/yaml", text
    if suffix == ".json":
        try:
            json.loads(text)
        except ValueError as exc:
            raise UsageProblem(f"{file} is not valid JSON: {exc}.") from None
        return "application/json", text
    # Unknown extension or stdin: JSON if it parses as JSON, else YAML (the server
    # reports YAML problems with the offending key and line).
    try:
        json.loads(text)
    except ValueError:
        return "application/yaml", text
    return "application/json", text


@settings_app.command("set")
def settings_set(
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE", help="A YAML limits document or a JSON settings file; - for stdin."
        ),
    ],
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Replace settings from FILE (admins): YAML is the limits document, JSON the settings."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    content_type, text = _read_settings_file(file)
    with connect(cfg) as client:
        body = client.put(
            f"/orgs/{seg(slug)}/settings",
            content=text.encode("utf-8"),
            headers={"Content-Type": content_type},
        )
    if json_:
        output.print_json(body)
    else:
        version = body.get("version") if isinstance(body, dict) else None
        suffix = f" (version {version})" if version is not None else ""
        output.say(f"Settings of '{slug}' updated{suffix}.")
        without = body.get("members_without_2fa") if isinstance(body, dict) else None
        if without:
            output.note(
                f"Two-factor is required: {without} member(s) without it get 403 until they "
                "enable it (`cshare member list` shows who)."
            )
