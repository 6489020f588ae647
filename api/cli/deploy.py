"""`cshare deploy`: register a prefect.yaml's deployments (or one flow) with the org.

Each flow is loaded here, on the caller's machine, to compute its parameter schema
(exactly as `prefect deploy` does), so the server can check a job's parameters before
anything reaches Prefect. Loading imports Prefect: only this command pays for it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from api.cli import config, output
from api.cli.client import Client, connect, require_org, seg
from api.cli.options import JsonOpt, OrgOpt
from api.cli.output import CliError, UsageProblem
from api.cli.prefect_yaml import Planned, read_prefect_yaml, run_build_steps


def load_flow(entrypoint: str, base: Path) -> tuple[str, dict[str, Any]]:
    """(flow name, parameter schema) of `path.py:flow` (relative to `base`) or
    `package.module:flow` (importable from `base`)."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    target = entrypoint
    file_part = entrypoint.rsplit(":", 1)[0]
    if file_part.endswith(".py"):
        target = str((base / file_part).resolve()) + ":" + entrypoint.rsplit(":", 1)[1]
    elif str(base) not in sys.path:
        sys.path.insert(0, str(base))
    try:
        flow: Any = load_flow_from_entrypoint(target, use_placeholder_flow=False)
    except Exception as exc:  # any import-time error of user code
        raise CliError(f"Cannot load the flow '{entrypoint}': {exc}") from None
    schema: dict[str, Any] = parameter_schema(flow.fn).model_dump_for_openapi()
    return str(flow.name), schema


def deploy(
    target: Annotated[
        str | None,
        typer.Argument(
            help="A prefect.yaml (default: ./prefect.yaml), or one flow as 'path.py:flow' "
            "or 'package.module:flow'.",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Only this deployment of the file; for a flow, its name."),
    ] = None,
    machine_type: Annotated[
        str,
        typer.Option(
            "--machine-type",
            help="Machine type the jobs run on (a prefect.yaml's work_pool.name wins when "
            "it names one).",
        ),
    ] = "cpu",
    path: Annotated[
        str | None,
        typer.Option(
            "--path",
            help="Where the code lives on the machines (default: the file's pull steps, "
            "else $CSHARE_FLOWS_DIR on each machine).",
        ),
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(
            "--project",
            help="The project to register into (default: the current project, see "
            "`cshare project use`; else the org's 'default' project).",
            show_default=False,
        ),
    ] = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Register deployments with the organization (creates or updates them)."""
    target = target or "prefect.yaml"
    file: Path | None = None
    if target.endswith((".yaml", ".yml")):
        file = Path(target)
        if not file.exists():
            raise UsageProblem(f"{file} not found.", hint="Pass a prefect.yaml or 'path.py:flow'.")
    elif ":" not in target:
        raise UsageProblem(
            f"'{target}' is neither a prefect.yaml nor a flow entrypoint ('path.py:flow')."
        )

    cfg = config.effective()
    slug = require_org(cfg, org)
    project = project or config.current_project(cfg, slug)
    results: list[dict[str, Any]] = []
    with connect(cfg) as client:
        if file is not None:
            parsed = read_prefect_yaml(
                file, org_slug=slug, machine_types=_machine_types(client, slug)
            )
            for warning in parsed.warnings:
                output.note(f"Warning: {warning}")
            planned = parsed.deployments
            if name is not None:
                planned = [p for p in planned if p.name == name]
                if not planned:
                    raise UsageProblem(f"No deployment named '{name}' in {file}.")
            for p in planned:
                run_build_steps(p, output.note)  # stdout stays for --json
        else:
            planned = [Planned(name="", entrypoint=target, base=Path.cwd())]
        for p in planned:
            flow_name, schema = load_flow(p.entrypoint, p.base)
            body: dict[str, Any] = {
                "name": p.name or name or flow_name.replace("_", "-"),
                "entrypoint": p.entrypoint,
                "machine_type": p.machine_type or machine_type,
                "flow_name": flow_name,
                "description": p.description,
                "tags": p.tags,
                "parameters": p.parameters,
                "parameter_schema": schema,
                "job_variables": p.job_variables,
            }
            if project is not None:
                body["project"] = project
            if path is not None:
                body["path"] = path
            elif p.pull_steps is not None:
                body["pull_steps"] = p.pull_steps
            body.update(p.body_extras())
            results.append(client.post(f"/orgs/{seg(slug)}/deployments", json=body))
    if json_:
        output.print_json({"items": results, "total": len(results)})
        return
    output.table(
        ["NAME", "PROJECT", "FLOW", "ENTRYPOINT", "POOL", "PREFECT"],
        (
            [
                r.get("name"),
                r.get("project"),
                r.get("flow_name"),
                r.get("entrypoint"),
                r.get("work_pool"),
                r.get("prefect_name"),
            ]
            for r in results
        ),
        title=f"Deployments registered with {slug}",
    )


def _machine_types(client: Client, slug: str) -> list[str] | None:
    """The org's machine types (to map a prefect.yaml work_pool.name), None if unknown."""
    try:
        settings = client.get(f"/orgs/{seg(slug)}/settings")
        types = settings["limits"]["organization"]["machine_types"]
    except (CliError, KeyError, TypeError):
        return None
    return sorted(types) if isinstance(types, dict) else None
