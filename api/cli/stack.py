"""`cshare up`: the whole embedded stack in the foreground (see api.cli.up)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from api.cli import logs
from api.cli.options import JsonOpt, LogFormatOpt
from api.cli.output import CliError, printed_as_json, say, table
from api.format import duration


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
    sqlite: Annotated[
        bool,
        typer.Option(
            "--sqlite",
            help="SQLite files under CSHARE_HOME instead of the embedded PostgreSQL (small "
            "trials; Prefect stalls on SQLite's write lock under load).",
        ),
    ] = False,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="CSHARE_DATABASE_URL",
            help="An external PostgreSQL for Compute Share (default: the embedded one).",
            show_default=False,
        ),
    ] = None,
    prefect_database_url: Annotated[
        str | None,
        typer.Option(
            "--prefect-database-url",
            envvar="CSHARE_PREFECT_DATABASE_URL",
            help="An external database for Prefect (postgresql+asyncpg://...; default: the "
            "embedded PostgreSQL's `prefect` database).",
            show_default=False,
        ),
    ] = None,
    log_format: LogFormatOpt = None,
    status: Annotated[
        bool,
        typer.Option(
            "--status",
            help="Show the running stack's children (pid, state, restarts, uptime) and exit.",
        ),
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Run the embedded stack on this machine: PostgreSQL, Prefect, the API with its
    dispatcher, and a local agent, each restarted if it crashes. Data lives in CSHARE_HOME
    (default ~/.cshare); Ctrl-C stops everything."""
    from api.cli.up.errors import StackError
    from api.cli.up.stack import Stack, StackOptions
    from orgs.config import Settings

    settings = Settings()
    home = Path(os.environ.get("CSHARE_HOME") or settings.home).expanduser().resolve()
    if status:
        raise typer.Exit(_show_status(home, json_))
    chosen = logs.setup(log_format)
    options = StackOptions(
        home=home,
        host=host,
        port=port,
        prefect_port=prefect_port,
        demo=demo,
        agent=agent,
        database_url=database_url or settings.database_url,
        prefect_database_url=prefect_database_url,
        sqlite=sqlite,
        log_format=chosen,
    )
    try:
        code = Stack(options).run()
    except StackError as exc:
        raise CliError(str(exc)) from None
    raise typer.Exit(code)


def _show_status(home: Path, json_: bool) -> int:
    """Print the status file; exit code 0 while the stack runs, 1 when it does not."""
    from api.cli.up.errors import StackError
    from api.cli.up.status import read_status

    try:
        current = read_status(home)
    except StackError as exc:
        raise CliError(str(exc)) from None
    if current is None:
        raise CliError(f"No `cshare up` has run with CSHARE_HOME={home}.")
    report = current.report()
    running = bool(report["supervisor_running"])
    if printed_as_json(report, json_):
        return 0 if running else 1
    if running:
        say(f"Stack {current.state} in {home} (supervisor pid {current.supervisor_pid}).")
    else:
        say(f"No stack is running in {home}; the last one's children as it left them:")
    rows = []
    for child, raw in zip(current.children, report["children"], strict=True):
        last_exit = ""
        if child.last_exit_code is not None:
            last_exit = f"{child.last_exit_code} at {_clock(child.last_exit_at)}"
        state = str(child.state)
        if child.restart_at:
            state += f" (at {_clock(child.restart_at)})"
        if child.crash_loop:
            state += ", CRASH LOOP"
        uptime = raw["uptime_s"]
        rows.append(
            [
                child.title,
                child.pid,
                state,
                child.restarts,
                last_exit,
                duration(uptime) if uptime is not None else "",
                child.log,
            ]
        )
    table(
        ["CHILD", "PID", "STATE", "RESTARTS", "LAST EXIT", "UPTIME", "LOG"],
        rows,
        empty="No child started yet.",
    )
    return 0 if running else 1


def _clock(moment: str | None) -> str:
    """An ISO UTC time from the status file as 'YYYY-MM-DD HH:MM:SS UTC'."""
    if not moment:
        return ""
    return datetime.fromisoformat(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
