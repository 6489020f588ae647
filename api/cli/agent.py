"""`cshare agent start`: share this machine with the organization (see agents.agent)."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from api.cli import config, logs
from api.cli.client import require_org
from api.cli.options import LogFormatOpt, OrgOpt

app = typer.Typer(help="Run this machine's agent.", no_args_is_help=True)


class PoolType(StrEnum):
    process = "process"
    docker = "docker"


@app.command("start")
def start(
    name: Annotated[
        str | None,
        typer.Option("--name", help="The machine's name in the org (default: the host name)."),
    ] = None,
    machine_type: Annotated[
        str, typer.Option("--machine-type", help="One of the org's machine types.")
    ] = "cpu",
    slots: Annotated[
        int, typer.Option("--slots", min=1, max=256, help="Jobs this machine runs at once.")
    ] = 1,
    pool_type: Annotated[
        PoolType, typer.Option("--pool-type", help="How jobs run here.")
    ] = PoolType.process,
    flows_dir: Annotated[
        Path | None,
        typer.Option(
            "--flows-dir",
            help="Where the org's flow code is on this machine (CSHARE_FLOWS_DIR; "
            "default: the current directory).",
        ),
    ] = None,
    poll_interval: Annotated[
        float | None,
        typer.Option("--poll-interval", min=0.1, help="Seconds between fallback polls."),
    ] = None,
    org: OrgOpt = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Register this machine (once), wait for approval, then run the org's jobs.

    When it ends it stops its running jobs and says why in one line. Exit status:

    \b
    0  stopped by SIGINT or SIGTERM
    3  the machine may no longer work: rejected, removed, its owner no longer a
       member, or the organization deleted (do not restart it as is)
    1  it could not start (not registered and no login, registration refused)
    75 the API was unreachable at start (try again later)
    """
    import anyio

    from agents.agent import Agent, AgentOptions
    from agents.hardware import default_machine_name

    logs.setup(log_format)
    cfg = config.effective()
    slug = require_org(cfg, org)
    options = AgentOptions(
        api_url=cfg.api_url,
        org=slug,
        user_token=cfg.token,
        name=name or default_machine_name(),
        machine_type=machine_type,
        slots=slots,
        pool_type=pool_type.value,
        flows_dir=str((flows_dir or Path.cwd()).resolve()),
        poll_interval_s=poll_interval,
        # Set by a capacity provider (docs/elastic.md); an environment variable, not an
        # option, so the secret is not on the command line.
        machine_token=os.environ.get("CSHARE_MACHINE_TOKEN") or None,
    )
    code = anyio.run(Agent(options).run)
    raise typer.Exit(code)
