"""`cshare project deploy-key ...` and `cshare project git-token ...`: a project's
credentials for its private Git repository. Keys and tokens go in, never out: `show`
prints the public key (to paste into GitHub/GitLab) or the token's user name."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from api.cli import config, output
from api.cli.client import connect, require_org, seg
from api.cli.options import JsonOpt, OrgOpt, YesOpt
from api.cli.output import UsageProblem

deploy_key = typer.Typer(
    help="The project's SSH deploy key for its private Git repository.", no_args_is_help=True
)
git_token = typer.Typer(
    help="The project's HTTPS token for its private Git repository.", no_args_is_help=True
)

ProjectArg = Annotated[
    str | None,
    typer.Argument(metavar="[PROJECT]", help="The project (default: the current one)."),
]


def _target(org: str | None, project: str | None) -> tuple[config.Effective, str, str, str]:
    cfg = config.effective()
    slug = require_org(cfg, org)
    name = project or config.current_project(cfg, slug)
    if not name:
        raise UsageProblem(
            "No project given.", hint="Name it, or pick one with `cshare project use NAME`."
        )
    return cfg, slug, name, f"/orgs/{seg(slug)}/projects/{seg(name)}"


def _show_key(key: dict[str, Any], name: str) -> None:
    # As is, one line: a console that wraps it would break the copy-paste.
    sys.stdout.write(f"{key.get('public_key')}\n")
    output.note(
        f"{key.get('key_type')} key {key.get('fingerprint')} of project '{name}'. Add the "
        "line above as a read-only deploy key of the repository (GitHub: Settings > Deploy "
        "keys; GitLab: Settings > Repository > Deploy keys)."
    )


@deploy_key.command("generate")
def generate(
    project: ProjectArg = None,
    private_key_file: Annotated[
        Path | None,
        typer.Option(
            "--private-key-file",
            help="Store this private key (OpenSSH or PEM, no passphrase) instead of "
            "generating one.",
            dir_okay=False,
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the project's existing key.")
    ] = False,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Make the project's deploy key (ed25519) and print its public key."""
    cfg, _slug, name, base = _target(org, project)
    body: dict[str, Any] = {"replace": replace}
    if private_key_file is not None:
        try:
            body["private_key"] = private_key_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise UsageProblem(f"Cannot read {private_key_file}: {reason}.") from None
    with connect(cfg) as client:
        key = client.post(f"{base}/deploy-key", json=body)
    if not output.printed_as_json(key, json_):
        _show_key(key, name)


@deploy_key.command("show")
def show_key(project: ProjectArg = None, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Print the project's public deploy key and its fingerprint."""
    cfg, _slug, name, base = _target(org, project)
    with connect(cfg) as client:
        key = client.get(f"{base}/deploy-key")
    if not output.printed_as_json(key, json_):
        _show_key(key, name)


@deploy_key.command("delete")
def delete_key(
    project: ProjectArg = None, org: OrgOpt = None, yes: YesOpt = False, json_: JsonOpt = False
) -> None:
    """Delete the project's deploy key (jobs can no longer fetch with it)."""
    cfg, slug, name, base = _target(org, project)
    if not yes:
        typer.confirm(f"Delete the deploy key of project '{name}' in '{slug}'?", abort=True)
    with connect(cfg) as client:
        client.delete(f"{base}/deploy-key")
    if json_:
        output.print_json({"deleted": "deploy-key", "project": name, "org": slug})
    else:
        output.say(f"Deleted the deploy key of project '{name}'.")


@git_token.command("set")
def set_token(
    project: ProjectArg = None,
    token_stdin: Annotated[
        bool, typer.Option("--token-stdin", help="Read the token from standard input.")
    ] = False,
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            help="User name sent with the token (GitHub: x-access-token, the default; "
            "GitLab: oauth2).",
        ),
    ] = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Store an HTTPS access token for the project's repository (read from stdin, never
    from the command line)."""
    if not token_stdin:
        raise UsageProblem("Give the token on standard input with --token-stdin.")
    token = sys.stdin.read().strip()
    if not token:
        raise UsageProblem("Expected the token on standard input, got nothing.")
    cfg, _slug, name, base = _target(org, project)
    body: dict[str, Any] = {"token": token}
    if user:
        body["user"] = user
    with connect(cfg) as client:
        info = client.put(f"{base}/git-token", json=body)
    if not output.printed_as_json(info, json_):
        output.say(f"Git token set for project '{name}' (user {info.get('user')}).")


@git_token.command("show")
def show_token(project: ProjectArg = None, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Whether the project has a token, and its user name (never the token)."""
    cfg, _slug, name, base = _target(org, project)
    with connect(cfg) as client:
        info = client.get(f"{base}/git-token")
    if not output.printed_as_json(info, json_):
        output.say(
            f"Project '{name}' has a Git token (user {info.get('user')}), set "
            f"{output.when(info.get('updated_at'))}."
        )


@git_token.command("delete")
def delete_token(
    project: ProjectArg = None, org: OrgOpt = None, yes: YesOpt = False, json_: JsonOpt = False
) -> None:
    """Delete the project's Git token."""
    cfg, slug, name, base = _target(org, project)
    if not yes:
        typer.confirm(f"Delete the Git token of project '{name}' in '{slug}'?", abort=True)
    with connect(cfg) as client:
        client.delete(f"{base}/git-token")
    if json_:
        output.print_json({"deleted": "git-token", "project": name, "org": slug})
    else:
        output.say(f"Deleted the Git token of project '{name}'.")
