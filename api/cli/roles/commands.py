"""`cshare prefect-server` and `cshare services` (see api.cli.roles)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Final

import typer

from api.cli.output import CliError
from api.cli.up.prefect_env import PrefectConfig, prefect_env

VENV_BIN: Final = Path(sys.executable).parent

PrefectDbOpt = Annotated[
    str,
    typer.Option(
        "--database-url",
        envvar="CSHARE_PREFECT_DATABASE_URL",
        help="Prefect's database, postgresql+asyncpg://... (all replicas share it).",
        show_default=False,
    ),
]
RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        envvar="CSHARE_REDIS_URL",
        help="Redis for Prefect's messaging, event ordering, leases and docket "
        "(redis://host:6379/0); needed as soon as there is more than one replica.",
        show_default=False,
    ),
]
AuthOpt = Annotated[
    str,
    typer.Option(
        "--auth-string",
        envvar="CSHARE_PREFECT_AUTH_STRING",
        help="Prefect's API auth string (user:password), the same in every role.",
        show_default=False,
    ),
]
PrefectHomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--prefect-home",
        help="PREFECT_HOME of this process (default: CSHARE_HOME/prefect).",
        show_default=False,
    ),
]


def _home(given: Path | None) -> Path:
    from orgs.config import Settings

    if given is not None:
        return given.expanduser().resolve()
    home = Path(os.environ.get("CSHARE_HOME") or Settings().home).expanduser().resolve()
    return home / "prefect"


def prefect_server(
    database_url: PrefectDbOpt,
    auth_string: AuthOpt,
    redis_url: RedisOpt = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 4200,
    public_url: Annotated[
        str | None,
        typer.Option(
            "--public-url",
            envvar="CSHARE_PREFECT_UI_URL",
            help="Where browsers reach Prefect's UI (the load balancer's URL).",
            show_default=False,
        ),
    ] = None,
    prefect_home: PrefectHomeOpt = None,
) -> None:
    """Run one Prefect API replica (`prefect server start --no-services`).

    Prefect's migrations and block registration run first, under a PostgreSQL advisory
    lock, so replicas may start together; the server then starts with both turned off.
    Prefect's background services run in `cshare services`.
    """
    config = PrefectConfig(
        home=_home(prefect_home),
        database_url=database_url,
        auth=auth_string,
        host=host,
        port=port,
        public_url=public_url or f"http://{host}:{port}",
        redis_url=redis_url,
    )
    config.home.mkdir(parents=True, exist_ok=True)
    env = prefect_env(config)
    typer.echo(f"Preparing Prefect's database (migrations, block types) for {host}:{port} ...")
    prepared = subprocess.run(
        [sys.executable, "-m", "api.cli.roles.prefect_db"], env=env, cwd=config.home
    )
    if prepared.returncode != 0:
        raise CliError(f"Preparing Prefect's database failed (exit {prepared.returncode}).")
    env.update(
        PREFECT_SERVER_DATABASE_MIGRATE_ON_START="false",
        PREFECT_SERVER_REGISTER_BLOCKS_ON_START="false",
    )
    prefect = str(VENV_BIN / "prefect")
    args = [prefect, "server", "start", "--no-services", "--host", host, "--port", str(port)]
    sys.stdout.flush()
    # Replaced, not a child: this PID is the server's for systemd, compose and signals.
    os.chdir(config.home)
    os.execve(prefect, args, env)  # noqa: S606 - our own venv's program, no shell


def services(
    database_url: PrefectDbOpt,
    auth_string: AuthOpt,
    redis_url: RedisOpt = None,
    prefect: Annotated[
        bool, typer.Option("--prefect/--no-prefect", help="Run Prefect's background services.")
    ] = True,
    loops: Annotated[
        bool,
        typer.Option("--loops/--no-loops", help="Run Compute Share's background loops."),
    ] = True,
    health_host: Annotated[
        str, typer.Option("--health-host", help="Interface of the /healthz endpoint.")
    ] = "127.0.0.1",
    health_port: Annotated[
        int | None,
        typer.Option("--health-port", help="Serve GET /healthz on this port.", show_default=False),
    ] = None,
    prefect_home: PrefectHomeOpt = None,
) -> None:
    """Run Prefect's background services and Compute Share's background loops.

    One is meant to run; a second stands by (Prefect's services wait on a PostgreSQL
    advisory lock, the dispatcher on its lease) and takes over when the first dies.
    Compute Share's settings (CSHARE_DATABASE_URL, CSHARE_PREFECT_API_URL, ...) are the
    API's.
    """
    from api.cli import logs
    from api.cli.roles.services import ServicesProcess, serve_health

    logs.setup(None)
    config = PrefectConfig(
        home=_home(prefect_home), database_url=database_url, auth=auth_string, redis_url=redis_url
    )
    process = ServicesProcess(config, prefect=prefect, loops=loops, say=typer.echo)
    health = serve_health(process, health_host, health_port) if health_port else None
    try:
        code = process.run()
    finally:
        if health is not None:
            health.shutdown()
    raise typer.Exit(code)
