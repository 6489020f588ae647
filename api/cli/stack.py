"""`cshare up`: the whole embedded stack in the foreground (see api.cli.up)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from api.cli import logs
from api.cli.options import LogFormatOpt
from api.cli.output import CliError


def up(
    port: Annotated[
        int, typer.Option("--port", envvar="CSHARE_PORT", help="The API's port.", min=1, max=65535)
    ] = 8000,
    prefect_port: Annotated[
        int,
        typer.Option(
            "--prefect-port",
            envvar="CSHARE_PREFECT_PORT",
            help="The Prefect server's port (its UI too).",
            min=1,
            max=65535,
        ),
    ] = 4200,
    host: Annotated[
        str, typer.Option("--host", help="Interface the API and Prefect listen on.")
    ] = "127.0.0.1",
    demo: Annotated[
        bool,
        typer.Option("--demo", help="Also register the example flows and submit a few jobs."),
    ] = False,
    agent: Annotated[
        bool, typer.Option("--agent/--no-agent", help="Run a local agent for this machine.")
    ] = True,
    log_format: LogFormatOpt = None,
) -> None:
    """Run the embedded stack on this machine: Prefect, the API with its dispatcher, and a
    local agent. Data lives in CSHARE_HOME (default ~/.cshare); Ctrl-C stops everything."""
    from api.cli.up.errors import StackError
    from api.cli.up.stack import Stack, StackOptions
    from orgs.config import Settings

    chosen = logs.setup(log_format)
    settings = Settings()
    home = Path(os.environ.get("CSHARE_HOME") or settings.home)
    options = StackOptions(
        home=home,
        host=host,
        port=port,
        prefect_port=prefect_port,
        demo=demo,
        agent=agent,
        database_url=settings.database_url,
        log_format=chosen,
    )
    try:
        code = Stack(options).run()
    except StackError as exc:
        raise CliError(str(exc)) from None
    raise typer.Exit(code)
