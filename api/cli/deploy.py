"""`cshare deploy`: register a prefect.yaml's deployments (or one flow) with the org.

Each flow is loaded here, on the caller's machine, to compute its parameter schema
(exactly as `prefect deploy` does), so the server can check a job's parameters before
anything reaches Prefect. Loading imports Prefect: only this command pays for it.

By default the code travels: the project around the entrypoint (the nearest ancestor
holding prefect.yaml, pyproject.toml or .git) is packed into a deterministic bundle
(`api.cli.bundle_files`, `datasets.bundle_format`), uploaded once per digest, and the
deployment names that digest; each machine fetches it for each job. `--git URL --ref
REF` (or a prefect.yaml `git_clone` pull step) ships no bundle: the server pins the
deployment to the commit REF names and each machine checks that commit out. `--path DIR`
(or a prefect.yaml deployment with other pull steps) keeps the code where it already is
on the machines.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from api.cli import bundle_files, config, output
from api.cli.client import Client, connect, require_org, seg
from api.cli.options import JsonOpt, OrgOpt
from api.cli.output import ApiError, CliError, UsageProblem
from api.cli.prefect_yaml import Planned, git_clone_source, read_prefect_yaml, run_build_steps
from datasets import bundle_format


def load_flow(
    entrypoint: str, base: Path, *, root: Path | None = None
) -> tuple[str, dict[str, Any]]:
    """(flow name, parameter schema) of `path.py:flow` (relative to `base`) or
    `package.module:flow` (importable from `base`). `root`: a bundle's project root,
    importable here as it is on the machines (first on the job's PYTHONPATH)."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))

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


@dataclass(frozen=True)
class Shipped:
    """A project's bundle, in the org (uploaded now or before)."""

    root: Path
    packed: bundle_format.Packed
    uploaded: bool


def entrypoint_in_bundle(entrypoint: str, base: Path) -> tuple[Path, str]:
    """(project root, the entrypoint relative to it) for `path.py:flow` (relative to
    `base`) or `package.module:flow` (importable from `base`)."""
    file_part, _, fn = entrypoint.rpartition(":")
    if file_part.endswith(".py"):
        path = (base / file_part).resolve()
        if not path.is_file():
            raise CliError(f"The entrypoint's file {path} does not exist.")
        root = bundle_files.project_root(path)
        return root, f"{path.relative_to(root).as_posix()}:{fn}"
    root = bundle_files.project_root(base)
    module_dir = base.resolve().relative_to(root)
    prefix = ".".join(module_dir.parts)
    return root, f"{prefix}.{file_part}:{fn}" if prefix else entrypoint


def ship(client: Client, slug: str, root: Path) -> Shipped:
    """Pack the project at `root`, upload it unless the org has it (HEAD), and return
    what the deployment names."""
    try:
        selection = bundle_files.select_files(root)
    except bundle_files.BundleTooLarge as exc:
        raise CliError(str(exc)) from None
    buffer = io.BytesIO()
    packed = bundle_format.pack(root, selection.files, buffer)
    path = f"/orgs/{seg(slug)}/bundles/{packed.digest}"
    try:
        client.request("HEAD", path)
        return Shipped(root, packed, uploaded=False)
    except ApiError as exc:
        if exc.status != 404:
            raise
    client.put(
        path,
        params={"files": packed.files},
        content=buffer.getvalue(),
        headers={"Content-Type": bundle_format.MEDIA_TYPE},
    )
    return Shipped(root, packed, uploaded=True)


def git_source(p: Planned, url: str | None, ref: str | None, track: bool) -> dict[str, Any] | None:
    """The deployment's `git` body (`--git`, or the file's git_clone pull step), or None."""
    if url is not None:
        return {"repository": url, "ref": ref or "HEAD", "track": track}
    source, warnings = git_clone_source(p.pull_steps, f"deployment '{p.name}'")
    for warning in warnings:
        output.note(f"Warning: {warning}")
    return source


def _git_root(path: Path) -> Path | None:
    for folder in (path.parent, *path.parent.parents):
        if (folder / ".git").exists():
            return folder
    return None


def _git_flow(p: Planned) -> tuple[str, str | None, dict[str, Any]]:
    """(entrypoint relative to the repository's root, flow name, parameter schema) of a
    Git deployment. With the file here (a checkout), the flow is loaded for its schema;
    without it, the entrypoint is taken as relative to the root and unchecked."""
    file_part, _, fn = p.entrypoint.rpartition(":")
    local = (p.base / file_part).resolve() if file_part.endswith(".py") else None
    if local is None or not local.is_file():
        return p.entrypoint, None, {}  # the server names the flow after its function
    root = _git_root(local)
    entrypoint = f"{local.relative_to(root).as_posix()}:{fn}" if root else p.entrypoint
    flow_name, schema = load_flow(p.entrypoint, p.base, root=root)
    return entrypoint, flow_name, schema


def _human(n: int) -> str:
    return f"{n / 1024:.1f} KB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MB"


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
            help="Where the code already lives on the machines (no bundle is shipped). "
            "Default: the project is packed into a code bundle that each machine fetches.",
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
    git: Annotated[
        str | None,
        typer.Option(
            "--git",
            help="Run the code of this Git repository (https://, ssh:// or git@host:path; "
            "private ones with the project's deploy key or token) instead of a bundle. "
            "The entrypoint is relative to the repository's root.",
            show_default=False,
        ),
    ] = None,
    ref: Annotated[
        str | None,
        typer.Option(
            "--ref",
            help="With --git: the branch, tag or commit (default: the repository's HEAD), "
            "resolved to a commit now and pinned.",
            show_default=False,
        ),
    ] = None,
    track: Annotated[
        bool,
        typer.Option(
            "--track", help="With --git: resolve the branch again at each job submission."
        ),
    ] = False,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Register deployments with the organization (creates or updates them)."""
    if git is None and (ref is not None or track):
        raise UsageProblem("--ref and --track go with --git URL.")
    if git is not None and path is not None:
        raise UsageProblem("Give either --git or --path, not both.")
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
    shipped: dict[Path, Shipped] = {}
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
            entrypoint = p.entrypoint
            bundle: Shipped | None = None
            root: Path | None = None
            source = git_source(p, git, ref, track)
            flow_name: str | None
            if source is not None:
                entrypoint, flow_name, schema = _git_flow(p)
            else:
                if path is None and p.pull_steps is None:
                    root, entrypoint = entrypoint_in_bundle(p.entrypoint, p.base)
                flow_name, schema = load_flow(p.entrypoint, p.base, root=root)
            if root is not None:
                if root not in shipped:
                    shipped[root] = ship(client, slug, root)
                bundle = shipped[root]
            body: dict[str, Any] = {
                "name": p.name
                or name
                or (flow_name or entrypoint.rsplit(":", 1)[-1]).replace("_", "-"),
                "entrypoint": entrypoint,
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
            if source is not None:
                body["git"] = source
            elif bundle is not None:
                body["code"] = {"kind": "bundle", "digest": bundle.packed.digest}
            elif path is not None:
                body["path"] = path
            elif p.pull_steps is not None:
                body["pull_steps"] = p.pull_steps
            body.update(p.body_extras())
            results.append(client.post(f"/orgs/{seg(slug)}/deployments", json=body))
    if json_:
        output.print_json({"items": results, "total": len(results)})
        return
    for s in shipped.values():
        verb = "uploaded" if s.uploaded else "already there"
        output.say(
            f"Code bundle {bundle_format.short(s.packed.digest)} of {s.root}: "
            f"{s.packed.files} files, {_human(s.packed.size)} ({verb})."
        )
    for r in results:
        code = r.get("code") or {}
        if code.get("kind") == "git":
            how = "tracking the branch" if code.get("track") else "pinned"
            output.say(
                f"Git {code.get('repository')} {code.get('ref')}: commit "
                f"{str(code.get('commit'))[:12]} ({how})."
            )
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
