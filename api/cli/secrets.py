"""`cshare secret ...`: the organization's secrets (admins). Values go in, never out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from api.cli import config, output
from api.cli.client import connect, read_org, require_org, seg
from api.cli.options import JsonOpt, OrgOpt, YesOpt
from api.cli.output import UsageProblem

app = typer.Typer(
    help="Organization secrets (admins): tokens, keys and passwords for jobs. Write-only.",
    no_args_is_help=True,
)

NameArg = Annotated[
    str,
    typer.Argument(metavar="NAME", help="Like an environment variable: GITHUB_TOKEN."),
]


def _value(value_stdin: bool, value_file: Path | None) -> str:
    """The value from stdin or a file; never from the command line (shell history, ps)."""
    if value_stdin == (value_file is not None):
        raise UsageProblem("Give the value with exactly one of --value-stdin or --value-file.")
    if value_file is not None:
        try:
            return value_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise UsageProblem(f"Cannot read {value_file}: {reason}.") from None
    text = sys.stdin.read()
    # `echo TOKEN | cshare secret set ...`: one line loses its newline; a multi-line value
    # (an SSH key) is kept exactly as given.
    if text.count("\n") == 1 and text.endswith("\n"):
        text = text.rstrip("\r\n")
    if not text:
        raise UsageProblem("Expected the secret's value on standard input, got nothing.")
    return text


@app.command("set")
def set_(
    name: NameArg,
    value_stdin: Annotated[
        bool, typer.Option("--value-stdin", help="Read the value from standard input.")
    ] = False,
    value_file: Annotated[
        Path | None,
        typer.Option("--value-file", help="Read the value from this file (as is).", dir_okay=False),
    ] = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create or replace a secret."""
    value = _value(value_stdin, value_file)
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        body = client.put(f"/orgs/{seg(slug)}/secrets/{seg(name)}", json={"value": value})
    if json_:
        output.print_json(body)
    else:
        output.say(f"Secret {body.get('name', name)} set in '{slug}'.")


@app.command("list")
def list_(org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """List the secrets' names (values are never shown)."""
    slug, page = read_org(org, "secrets", every_page=True)
    if output.printed_as_json(page, json_):
        return
    output.table(
        ["NAME", "UPDATED", "BY", "CREATED"],
        (
            [
                s.get("name"),
                output.when(s.get("updated_at")),
                (s.get("updated_by") or {}).get("name"),
                output.when(s.get("created_at"), minutes=False),
            ]
            for s in page["items"]
        ),
        title=f"Secrets of {slug}",
        empty="No secrets.",
    )


@app.command("delete")
def delete(name: NameArg, org: OrgOpt = None, yes: YesOpt = False, json_: JsonOpt = False) -> None:
    """Delete a secret."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    if not yes:
        typer.confirm(f"Delete secret {name} from '{slug}'?", abort=True)
    with connect(cfg) as client:
        client.delete(f"/orgs/{seg(slug)}/secrets/{seg(name)}")
    if json_:
        output.print_json({"deleted": name, "org": slug})
    else:
        output.say(f"Deleted secret {name} from '{slug}'.")
