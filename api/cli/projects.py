"""`cshare project ...`: projects group an organization's deployments."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from api.cli import config, output, project_git
from api.cli.client import connect, read_org, require_org, seg
from api.cli.options import JsonOpt, OrgOpt, YesOpt
from api.cli.output import UsageProblem

app = typer.Typer(help="Projects: groups of deployments.", no_args_is_help=True)
app.add_typer(project_git.deploy_key, name="deploy-key")
app.add_typer(project_git.git_token, name="git-token")

ProjectArg = Annotated[str, typer.Argument(metavar="NAME", help="The project's name.")]
GitOpt = Annotated[
    str | None,
    typer.Option("--git", help="Its Git repository: https://host/path or git@host:path."),
]
DescriptionOpt = Annotated[str | None, typer.Option("--description")]
VisibilityOpt = Annotated[
    str | None,
    typer.Option(
        "--visibility",
        help="Who sees it: org (everyone), teams (the --team teams) or personal (you).",
    ),
]
TeamOpt = Annotated[
    list[str] | None,
    typer.Option("--team", help="A team that sees it (repeat; with --visibility teams)."),
]


def _visibility_body(visibility: str | None, team: list[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if team and visibility is None:
        visibility = "teams"
    if visibility is not None:
        body["visibility"] = visibility
    if team:
        body["teams"] = list(team)
    return body


def _lines(project: dict[str, Any]) -> None:
    output.say(f"{project.get('name')}")
    if project.get("description"):
        output.say(str(project["description"]))
    output.say(f"git:         {project.get('git_url') or '-'}")
    shown = project.get("visibility") or "org"
    if project.get("teams"):
        shown += f" ({', '.join(project['teams'])})"
    output.say(f"visibility:  {shown}")
    output.say(f"deployments: {project.get('deployment_count')}")
    output.say(f"created:     {output.when(project.get('created_at'))}")
    deps = project.get("deployments") or []
    if deps:
        output.table(
            ["DEPLOYMENT", "FLOW", "ENTRYPOINT", "MACHINE TYPE"],
            (
                [d.get("name"), d.get("flow_name"), d.get("entrypoint"), d.get("machine_type")]
                for d in deps
            ),
        )


@app.command("create")
def create(
    name: ProjectArg,
    git: GitOpt = None,
    description: DescriptionOpt = None,
    visibility: VisibilityOpt = None,
    team: TeamOpt = None,
    use: Annotated[bool, typer.Option("--use", help="Make it the current project.")] = False,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create a project in the organization (visible to everyone unless --visibility)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    body: dict[str, Any] = {
        "name": name,
        "description": description or "",
        **_visibility_body(visibility, team),
    }
    if git is not None:
        body["git_url"] = git
    with connect(cfg) as client:
        project = client.post(f"/orgs/{seg(slug)}/projects", json=body)
    if use:
        config.update(project=f"{slug}/{project['name']}")
    if json_:
        output.print_json(project)
        return
    output.say(f"Created project '{project['name']}' in {slug}.")
    if not use:
        output.note(f"Deploy into it with `cshare project use {project['name']}`.")


@app.command("list")
def list_(org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """The organization's projects (* marks the current one)."""
    slug, page = read_org(org, "projects")
    if output.printed_as_json(page, json_):
        return
    current = config.current_project(config.effective(), slug)
    output.table(
        ["", "NAME", "VISIBILITY", "DEPLOYMENTS", "GIT", "DESCRIPTION"],
        (
            [
                "*" if p.get("name") == current else "",
                p.get("name"),
                p.get("visibility", "org")
                + (f" ({','.join(p['teams'])})" if p.get("teams") else ""),
                p.get("deployment_count"),
                p.get("git_url") or "",
                p.get("description") or "",
            ]
            for p in page.get("items", [])
        ),
        title=f"Projects in {slug}",
        empty="No projects yet: `cshare project create NAME`.",
    )


@app.command("show")
def show(name: ProjectArg, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """A project and its deployments."""
    _slug, project = read_org(org, "projects", name)
    if not output.printed_as_json(project, json_):
        _lines(project)


@app.command("update")
def update(
    name: ProjectArg,
    git: GitOpt = None,
    description: DescriptionOpt = None,
    visibility: VisibilityOpt = None,
    team: TeamOpt = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Change a project's description, Git repository (`--git ''` removes it) or
    visibility (`--visibility teams --team T`)."""
    if git is None and description is None and visibility is None and not team:
        raise UsageProblem(
            "Nothing to change: give --git, --description, --visibility and/or --team."
        )
    cfg = config.effective()
    slug = require_org(cfg, org)
    body: dict[str, Any] = {
        k: v for k, v in (("git_url", git), ("description", description)) if v is not None
    }
    body.update(_visibility_body(visibility, team))
    with connect(cfg) as client:
        project = client.patch(f"/orgs/{seg(slug)}/projects/{seg(name)}", json=body)
    if json_:
        output.print_json(project)
    else:
        output.say(f"Updated project '{name}'.")


@app.command("delete")
def delete(
    name: ProjectArg, org: OrgOpt = None, yes: YesOpt = False, json_: JsonOpt = False
) -> None:
    """Delete a project and its deployments (refused while any of them has active jobs)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        project = client.get(f"/orgs/{seg(slug)}/projects/{seg(name)}")
        if not yes:
            typer.confirm(
                f"Delete project '{name}' and its {project.get('deployment_count')} deployment(s)?",
                abort=True,
            )
        client.delete(f"/orgs/{seg(slug)}/projects/{seg(name)}")
    if config.current_project(cfg, slug) == name:
        config.update(project=None)
    if json_:
        output.print_json({"deleted": name, "org": slug})
    else:
        output.say(f"Deleted project '{name}' and its deployments.")


@app.command("use")
def use(name: ProjectArg, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Make NAME the current project: `cshare deploy` registers into it."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        project = client.get(f"/orgs/{seg(slug)}/projects/{seg(name)}")
    config.update(project=f"{slug}/{project['name']}")
    if json_:
        output.print_json(project)
    else:
        output.say(f"Current project in {slug}: {project['name']}.")
