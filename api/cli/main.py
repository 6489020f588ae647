"""The `cshare` command line (typer + rich): assembles the command groups.

Errors raised as `CliError` anywhere below are printed once, on stderr, and become the
exit code (see api.cli.output); nothing prints a traceback for an expected problem.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from api.cli import (
    account,
    agent,
    audit,
    db,
    invites,
    logs,
    machine_types,
    machines,
    members,
    org_profile,  # noqa: F401  (adds its commands to `cshare org`)
    orgs,
    output,
)
from api.cli import containers as container_cmds
from api.cli import datasets as dataset_cmds
from api.cli import deploy as deploy_cmd
from api.cli import jobs as job_cmds
from api.cli import lineage as lineage_cmds
from api.cli import overview as overview_cmds
from api.cli import projects as project_cmds
from api.cli import schedules as schedule_cmds
from api.cli import secrets as secret_cmds
from api.cli import stack as stack_cmds
from api.cli import teams as team_cmds
from api.cli import two_factor as two_factor_cmds
from api.cli.options import LogFormatOpt
from api.cli.roles import commands as role_cmds


class CshareGroup(TyperGroup):
    """The root group: the one place where a `CliError` becomes message + exit code."""

    # `Any`: the context class lives in typer's private vendored click.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except output.CliError as exc:
            output.print_error(exc)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    name="cshare",
    cls=CshareGroup,
    help="Compute Share: pool your organization's machines and run jobs on them.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold a token or password
)

app.command("signup")(account.signup)
app.command("login")(account.login)
app.command("logout")(account.logout)
app.command("whoami")(account.whoami)
app.add_typer(account.token_app, name="token")
app.add_typer(account.account_app, name="account")
account.account_app.add_typer(two_factor_cmds.app, name="2fa")
app.add_typer(orgs.app, name="org")
app.add_typer(members.app, name="member")
app.add_typer(team_cmds.app, name="team")
app.add_typer(invites.app, name="invite")
app.add_typer(machines.app, name="machine")
app.add_typer(machine_types.app, name="machine-type")
app.add_typer(agent.app, name="agent")
app.command("audit")(audit.audit)
app.add_typer(db.app, name="db")
app.command("deploy")(deploy_cmd.deploy)
app.add_typer(project_cmds.app, name="project")
app.add_typer(job_cmds.app, name="job")
app.add_typer(schedule_cmds.app, name="schedule")
app.add_typer(dataset_cmds.app, name="dataset")
app.add_typer(secret_cmds.app, name="secret")
app.add_typer(container_cmds.registry_app, name="registry")
job_cmds.app.command("run")(container_cmds.run)
app.command("lineage")(lineage_cmds.lineage)
orgs.app.command("overview")(overview_cmds.org_overview)
app.command("usage")(overview_cmds.usage)
app.command("up")(stack_cmds.up)
app.command("prefect-server")(role_cmds.prefect_server)
app.command("services")(role_cmds.services)

HostOpt = Annotated[str, typer.Option("--host", help="Interface to listen on.")]
PortOpt = Annotated[int, typer.Option("--port", help="Port to listen on.")]


@app.command()
def server(
    host: HostOpt = "127.0.0.1", port: PortOpt = 8000, log_format: LogFormatOpt = None
) -> None:
    """Run the API (with its dispatcher) alone.

    Logs (uvicorn's access lines too) go to stderr, each with its request's id.
    `kill -USR1 <pid>` prints every thread's stack to stderr (for a request that hangs).
    """
    import faulthandler
    import signal

    import uvicorn

    from api.app import create_app

    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logs.setup(log_format)
    typer.echo(f"Compute Share API listening on http://{host}:{port} (docs at /docs)")
    from orgs.config import get_settings

    # uvicorn believes X-Forwarded-* only from the proxies the app trusts (not loopback).
    # log_config=None: uvicorn keeps the configuration made above (its loggers included).
    proxies = get_settings().trusted_proxies
    uvicorn.run(
        create_app(),
        host=host,
        port=port,
        log_config=None,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
    )
