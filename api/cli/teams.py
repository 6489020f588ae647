"""`cshare team ...`: teams of an organization's members (admins manage them)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from api.cli import config, output
from api.cli.client import connect, read_org, require_org, seg
from api.cli.options import JsonOpt, OrgOpt, YesOpt
from api.cli.output import UsageProblem

app = typer.Typer(
    help="Teams: groups of members that projects may be shared with.", no_args_is_help=True
)

TeamArg = Annotated[str, typer.Argument(metavar="TEAM", help="The team's name.")]
UserArg = Annotated[str, typer.Argument(metavar="USER", help="A member's user name or id.")]
DescriptionOpt = Annotated[str | None, typer.Option("--description")]
MaxJobsOpt = Annotated[
    int | None,
    typer.Option("--max-jobs", help="Active jobs of the team's members combined (-1: no limit)."),
]
TypesOpt = Annotated[
    str | None,
    typer.Option(
        "--machine-types", help="Comma-separated machine types its members may use ('' : any)."
    ),
]


def _limits(max_jobs: int | None, machine_types: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if max_jobs is not None:
        body["max_concurrent_jobs"] = None if max_jobs < 0 else max_jobs
    if machine_types is not None:
        names = [t.strip() for t in machine_types.split(",") if t.strip()]
        body["machine_types"] = names or None
    return body


def _limit_text(team: dict[str, Any]) -> str:
    jobs = team.get("max_concurrent_jobs")
    types = team.get("machine_types")
    parts = [f"{jobs} jobs" if jobs is not None else "", ",".join(types) if types else ""]
    return "; ".join(p for p in parts if p) or "-"


@app.command("list")
def list_(org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """The organization's teams (members: the teams they are in)."""
    slug, page = read_org(org, "teams")
    if output.printed_as_json(page, json_):
        return
    output.table(
        ["NAME", "MEMBERS", "LIMITS", "DESCRIPTION"],
        (
            [t.get("name"), t.get("member_count"), _limit_text(t), t.get("description") or ""]
            for t in page.get("items", [])
        ),
        title=f"Teams in {slug}",
        empty="No teams.",
    )


@app.command("show")
def show(team: TeamArg, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """A team, its limits and its members."""
    _slug, body = read_org(org, "teams", team)
    if output.printed_as_json(body, json_):
        return
    output.say(str(body.get("name")))
    if body.get("description"):
        output.say(str(body["description"]))
    output.say(f"limits:  {_limit_text(body)}")
    members = [m.get("name") for m in body.get("members") or []]
    output.say(f"members: {', '.join(members) if members else '-'}")


@app.command("create")
def create(
    team: TeamArg,
    description: DescriptionOpt = None,
    max_jobs: MaxJobsOpt = None,
    machine_types: TypesOpt = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create a team (admins)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    body = {"name": team, "description": description or "", **_limits(max_jobs, machine_types)}
    with connect(cfg) as client:
        made = client.post(f"/orgs/{seg(slug)}/teams", json=body)
    if json_:
        output.print_json(made)
    else:
        output.say(f"Created team '{made['name']}' in {slug}.")
        output.note(f"Add members with `cshare team add {made['name']} USER`.")


@app.command("update")
def update(
    team: TeamArg,
    name: Annotated[str | None, typer.Option("--name", help="A new name.")] = None,
    description: DescriptionOpt = None,
    max_jobs: MaxJobsOpt = None,
    machine_types: TypesOpt = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Rename a team, or change its description or limits (admins)."""
    body = {
        **({"name": name} if name is not None else {}),
        **({"description": description} if description is not None else {}),
        **_limits(max_jobs, machine_types),
    }
    if not body:
        raise UsageProblem(
            "Nothing to change: give --name, --description, --max-jobs or --machine-types."
        )
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        changed = client.patch(f"/orgs/{seg(slug)}/teams/{seg(team)}", json=body)
    if json_:
        output.print_json(changed)
    else:
        output.say(f"Updated team '{changed['name']}'.")


@app.command("delete")
def delete(team: TeamArg, org: OrgOpt = None, yes: YesOpt = False, json_: JsonOpt = False) -> None:
    """Delete a team (projects shared only with it stay visible to admins and their creator)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    if not yes:
        typer.confirm(f"Delete team '{team}'?", abort=True)
    with connect(cfg) as client:
        client.delete(f"/orgs/{seg(slug)}/teams/{seg(team)}")
    if json_:
        output.print_json({"deleted": team, "org": slug})
    else:
        output.say(f"Deleted team '{team}'.")


@app.command("add")
def add(team: TeamArg, user: UserArg, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Add a member of the organization to a team (admins)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        body = client.post(f"/orgs/{seg(slug)}/teams/{seg(team)}/members", json={"user": user})
    if json_:
        output.print_json(body)
    else:
        output.say(f"Added {user} to team '{team}'.")


@app.command("remove")
def remove(team: TeamArg, user: UserArg, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Remove someone from a team (admins)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        client.delete(f"/orgs/{seg(slug)}/teams/{seg(team)}/members/{seg(user)}")
    if json_:
        output.print_json({"removed": user, "team": team, "org": slug})
    else:
        output.say(f"Removed {user} from team '{team}'.")
