"""`cshare job ...`: submit (or explain), list, show, rerun, cancel, logs."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import httpx
import typer

from api.cli import config, output
from api.cli.client import Client, connect, read_org, require_org, seg
from api.cli.options import JsonOpt, OrgOpt
from api.cli.output import UsageProblem
from api.format import duration as format_duration

app = typer.Typer(help="Submit jobs and follow them.", no_args_is_help=True)

FINAL = frozenset({"completed", "failed", "crashed", "cancelled", "rejected"})
JobArg = Annotated[str, typer.Argument(metavar="JOB", help="The job id.")]


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """`k=v` pairs; each value is read as JSON when it parses (3, 0.5, true, [1], "x"),
    else taken as a string."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageProblem(f"--param expects key=value, got '{item}'.")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


def parse_sweep(items: list[str] | None) -> list[dict[str, Any]]:
    """`--sweep k=v1,v2` options -> the parameter grid, their cartesian product, in order
    (the last option varies fastest). A value list that parses as a JSON array is taken
    whole (`k=[[1,2],[3]]`); otherwise it is split on commas and each value is read as
    JSON when it parses, else taken as a string."""
    axes: list[tuple[str, list[Any]]] = []
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageProblem(f"--sweep expects key=v1,v2,..., got '{item}'.")
        if any(key == k for k, _ in axes):
            raise UsageProblem(f"--sweep names '{key}' twice.")
        values: list[Any]
        try:
            whole = json.loads(raw)
        except ValueError:
            whole = None
        if isinstance(whole, list):
            values = whole
        else:
            values = [parse_params([f"{key}={v}"])[key] for v in raw.split(",")]
        if not values:
            raise UsageProblem(f"--sweep {key} has no values.")
        axes.append((key, values))
    grid: list[dict[str, Any]] = [{}]
    for key, values in axes:
        grid = [{**point, key: v} for point in grid for v in values]
    return grid


def parse_inputs(items: list[str] | None) -> list[dict[str, Any]]:
    inputs: list[dict[str, Any]] = []
    for item in items or []:
        dataset, _, version = item.partition("@")
        entry: dict[str, Any] = {"dataset": dataset}
        if version:
            entry["version"] = version
        inputs.append(entry)
    return inputs


def describe_code(code: dict[str, Any] | None) -> str:
    """`bundle sha256:1a2b3c4d5e6f (12 files, 40.1 KB); code fetch: 12 ms (cached)`, or
    `git <repository>@<commit[:12]>; code fetch: ...` for a Git source."""
    if not code:
        return "the machines' own copy"
    if code.get("kind") == "git":
        text = f"git {code.get('repository')}@{str(code.get('commit') or '')[:12]}"
    elif code.get("kind") != "bundle":
        return json.dumps(code)
    else:
        digest = str(code.get("digest") or "")
        text = f"bundle {digest[:19]}"
    if code.get("files") is not None and code.get("size") is not None:
        text += f" ({code['files']} files, {int(code['size']) / 1024:.1f} KB)"
    if code.get("fetch_ms") is not None:
        how = "cached" if code.get("cached") else "downloaded"
        text += f"; code fetch: {code['fetch_ms']} ms ({how})"
    if code.get("requirements_digest"):
        text += f"; requirements env {str(code['requirements_digest'])[:12]}"
    return text


def _describe(job: dict[str, Any]) -> str:
    state = job.get("state")
    text = f"Job {job.get('id')} is {state}"
    if state == "held":
        position = job.get("queue_position")
        text += f" (position {position} in your queue)" if position else ""
    if job.get("reason"):
        text += f": {job['reason']}"
    return text


@app.command("submit")
def submit(
    deployment: Annotated[str, typer.Argument(help="The deployment's name.")],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="key=value (value parsed as JSON if it can be)."),
    ] = None,
    machine_type: Annotated[str | None, typer.Option("--machine-type")] = None,
    memory: Annotated[int | None, typer.Option("--memory", help="Memory in MB.")] = None,
    runtime: Annotated[int | None, typer.Option("--runtime", help="Max runtime in s.")] = None,
    priority: Annotated[int, typer.Option("--priority", help="Higher runs first.")] = 0,
    input_: Annotated[
        list[str] | None, typer.Option("--input", help="DATASET[@VERSION] read by the job.")
    ] = None,
    outputs: Annotated[
        list[str] | None,
        typer.Option("--output", help="A DATASET the job writes (then only those; repeat)."),
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Extra run tags.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Resubmitting returns the same job.")
    ] = None,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            "--sweep",
            help="key=v1,v2,... : one job per point of the grid of all --sweep options "
            "(on top of --param), submitted in one batch call.",
        ),
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="Only say what would happen; create nothing.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job is over.")] = False,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Submit a job (or, with --explain, show the admission decision)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    body: dict[str, Any] = {
        "deployment": deployment,
        "parameters": parse_params(param),
        "priority": priority,
        "tags": list(tag or []),
        "inputs": parse_inputs(input_),
        "outputs": list(outputs or []),
        "resources": {"memory_mb": memory, "max_runtime_s": runtime},
    }
    if machine_type:
        body["machine_type"] = machine_type
    if idempotency_key:
        body["idempotency_key"] = idempotency_key
    if sweep:
        if explain or wait:
            raise UsageProblem(
                "--sweep submits a batch; it cannot be combined with --explain or --wait."
            )
        _submit_sweep(cfg, slug, body, parse_sweep(sweep), json_)
        return
    with connect(cfg) as client:
        if explain:
            result = client.post(f"/orgs/{seg(slug)}/jobs/explain", json=body)
            _print_explain(result, json_)
            return
        job = client.post(f"/orgs/{seg(slug)}/jobs", json=body)
        if wait:
            if not json_:
                output.say(_describe(job))
            job = _wait(client, slug, str(job["id"]))
    if json_:
        output.print_json(job)
    else:
        output.say(_describe(job))
        if job.get("prefect_url"):
            output.say(f"Prefect: {job['prefect_url']}")
    if wait and job.get("state") != "completed":
        raise typer.Exit(1)


MAX_BATCH = 1000  # the API's limit per batch call
BATCH_TIMEOUT = httpx.Timeout(600.0, connect=5.0)


def _submit_sweep(
    cfg: config.Effective, slug: str, body: dict[str, Any], grid: list[dict[str, Any]], json_: bool
) -> None:
    if len(grid) > MAX_BATCH:
        raise UsageProblem(
            f"The sweep makes {len(grid)} jobs; one batch holds at most {MAX_BATCH}."
        )
    items: list[dict[str, Any]] = []
    for i, point in enumerate(grid):
        item: dict[str, Any] = {**body, "parameters": {**body["parameters"], **point}}
        if body.get("idempotency_key"):
            item["idempotency_key"] = f"{body['idempotency_key']}/{i}"
        items.append(item)
    # A thousand runs take Prefect a while: more time than a single call's 30 s.
    with Client(cfg.api_url, cfg.token, timeout=BATCH_TIMEOUT) as client:
        result = client.post(f"/orgs/{seg(slug)}/jobs:batch", json={"jobs": items})
    if json_:
        output.print_json(result)
    else:
        rows = []
        for entry in result.get("items", []):
            shown = json.dumps(grid[entry["index"]], separators=(",", ":"))
            job = entry.get("job")
            if job:
                rows.append([str(entry["index"]), job["id"], job["state"], shown])
            else:
                rows.append([str(entry["index"]), "-", f"refused: {entry.get('detail')}", shown])
        output.table(["#", "JOB", "STATE", "PARAMETERS"], rows)
        output.say(
            f"{result.get('created', 0)} submitted, {result.get('existing', 0)} already "
            f"there, {result.get('failed', 0)} refused."
        )
    if result.get("failed"):
        raise typer.Exit(1)


def _print_explain(result: dict[str, Any], json_: bool) -> None:
    if json_:
        output.print_json(result)
        return
    decision = result.get("decision")
    line = f"Decision: {decision}"
    if result.get("rule"):
        line += f" ({result['rule']})"
    output.say(line)
    output.say(result.get("reason") or "")
    if result.get("queue_position"):
        output.say(f"Queue position: {result['queue_position']}")
    res = result.get("resources") or {}
    output.say(f"Resources: {res.get('memory_mb')} MB, {res.get('max_runtime_s')} s")
    output.table(
        ["RULE", "EFFECT", "STATUS", "REASON"],
        ([o["rule"], o["effect"], o["status"], o["reason"]] for o in result.get("rules", [])),
    )


def _wait(client: Client, slug: str, job_id: str, interval_s: float = 2.0) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = client.get(f"/orgs/{seg(slug)}/jobs/{seg(job_id)}")
        if job.get("state") in FINAL:
            return job
        time.sleep(interval_s)


@app.command("list")
def list_(
    state: Annotated[str | None, typer.Option("--state")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Admins: someone's jobs.")] = None,
    deployment: Annotated[str | None, typer.Option("--deployment")] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Only jobs with this tag (repeat: all).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List jobs, newest first (yours; admins see everyone's)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    params: dict[str, Any] = {
        "state": state,
        "user": user,
        "deployment": deployment,
        "tag": list(tag or []),
        "limit": limit,
    }
    with connect(cfg) as client:
        page = client.get(f"/orgs/{seg(slug)}/jobs", params=params)
    if json_:
        output.print_json(page)
        return
    output.table(
        ["ID", "DEPLOYMENT", "USER", "STATE", "CREATED", "TAGS", "REASON"],
        (
            [
                j.get("id"),
                j.get("deployment"),
                (j.get("user") or {}).get("name"),
                j.get("state"),
                output.when(j.get("created_at")),
                ", ".join(j.get("tags") or []),
                j.get("reason"),
            ]
            for j in page.get("items", [])
        ),
        title=f"Jobs in {slug} ({page.get('total', 0)})",
        empty="No jobs.",
    )


@app.command("show")
def show(job_id: JobArg, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """One job: state and reason, timings, machine, parameters, resources, Prefect link."""
    _slug, job = read_org(org, "jobs", job_id)
    if output.printed_as_json(job, json_):
        return
    res = job.get("resources") or {}
    machine = job.get("machine") or {}
    rows = [
        ("ID", job.get("id")),
        ("Deployment", job.get("deployment")),
        ("User", (job.get("user") or {}).get("name")),
        ("State", job.get("state")),
        ("Reason", job.get("reason")),
        ("Rule", job.get("rule")),
        ("Queue position", job.get("queue_position")),
        ("Machine", machine.get("name") or machine.get("id")),
        ("Machine type", job.get("machine_type")),
        ("Resources", f"{res.get('memory_mb')} MB, {res.get('max_runtime_s')} s"),
        ("Parameters", json.dumps(job.get("parameters") or {})),
        ("Code", describe_code(job.get("code"))),
        ("Image", "@".join(filter(None, (job.get("image") or {}).values())) or None),
        ("Priority", job.get("priority")),
        ("Tags", ", ".join(job.get("tags") or [])),
        ("Created", job.get("created_at")),
        ("Released", job.get("released_at")),
        ("Started", job.get("started_at")),
        ("Ended", job.get("ended_at")),
        ("Flow run", job.get("flow_run_id")),
        ("Prefect", job.get("prefect_url")),
    ]
    output.table(["FIELD", "VALUE"], ([k, v] for k, v in rows))


@app.command("rerun")
def rerun(
    job_id: JobArg,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the new job is over.")] = False,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Run a job again: same deployment, parameters, input versions and code (even if the
    deployment was redeployed since). A new job, admitted like any submission."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        job = client.post(f"/orgs/{seg(slug)}/jobs/{seg(job_id)}/rerun")
        if not json_:
            output.say(f"Rerun of {job_id}: " + _describe(job))
            output.say("Code: " + describe_code(job.get("code")))
        if wait:
            job = _wait(client, slug, str(job["id"]))
    if json_:
        output.print_json(job)
    elif wait:
        output.say(_describe(job))
    if wait and job.get("state") != "completed":
        raise typer.Exit(1)


def parse_tag_changes(changes: list[str]) -> tuple[list[str], list[str]]:
    """`+best -draft` -> (["best"], ["draft"])."""
    add: list[str] = []
    remove: list[str] = []
    for change in changes:
        sign, tag = change[:1], change[1:]
        if sign not in ("+", "-") or not tag:
            raise UsageProblem(f"Write each change as +tag or -tag (got '{change}').")
        (add if sign == "+" else remove).append(tag)
    return add, remove


@app.command(
    "tag", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True}
)
def tag(
    job_id: JobArg,
    changes: Annotated[
        list[str], typer.Argument(metavar="+TAG|-TAG...", help="+tag adds it, -tag removes it.")
    ],
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Add and remove a job's tags: `cshare job tag JOB +best -draft` (yours; admins any)."""
    add, remove = parse_tag_changes(changes)
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        job = client.patch(
            f"/orgs/{seg(slug)}/jobs/{seg(job_id)}/tags", json={"add": add, "remove": remove}
        )
    if json_:
        output.print_json(job)
        return
    output.say(f"Tags: {', '.join(job.get('tags') or []) or '(none)'}")
    if job.get("prefect_synced") is False:
        output.note("Prefect could not be reached: the run's tags there follow later.")


def _number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


@app.command("compare")
def compare(
    job_ids: Annotated[list[str], typer.Argument(metavar="JOB JOB...", help="2 to 10 job ids.")],
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Jobs side by side: state, duration, the parameters that differ and the latest
    value of each metric."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        result = client.get(f"/orgs/{seg(slug)}/jobs/compare", params={"ids": list(job_ids)})
    if output.printed_as_json(result, json_):
        return
    jobs_ = result.get("jobs") or []
    rows: list[list[Any]] = [
        ["deployment", *(j.get("deployment") for j in jobs_)],
        ["state", *(j.get("state") for j in jobs_)],
        [
            "duration",
            *(
                format_duration(j["duration_s"]) if j.get("duration_s") is not None else ""
                for j in jobs_
            ),
        ],
        ["tags", *(", ".join(j.get("tags") or []) for j in jobs_)],
    ]
    differing = [p for p in result.get("parameters") or [] if p.get("differs")]
    rows += [[f"param {p['key']}", *(json.dumps(v) for v in p["values"])] for p in differing]
    rows += [
        [f"metric {m['key']}", *(_number(v) for v in m["values"])]
        for m in result.get("metrics") or []
    ]
    output.table(["", *(str(j.get("label") or j.get("id")) for j in jobs_)], rows)
    if not differing:
        output.say("Parameters: the same in every job.")


@app.command("cancel")
def cancel(job_id: JobArg, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Cancel a job (yours; admins any): held ones at once, running ones via Prefect."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        job = client.post(f"/orgs/{seg(slug)}/jobs/{seg(job_id)}/cancel")
    if json_:
        output.print_json(job)
    else:
        output.say(_describe(job))


@app.command("logs")
def logs(
    job_id: JobArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job is over.")
    ] = False,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Print the job's log lines (flow and task logs, from Prefect)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    offset = 0
    with connect(cfg) as client:
        while True:
            page = client.get(
                f"/orgs/{seg(slug)}/jobs/{seg(job_id)}/logs", params={"offset": offset}
            )
            for line in page.get("items", []):
                if json_:
                    typer.echo(json.dumps(line))
                else:
                    typer.echo(f"{line['timestamp']} {line['level_name']:<7} {line['message']}")
            offset = int(page.get("next_offset", offset))
            if not follow or page.get("done"):
                return
            if not page.get("items"):
                time.sleep(1.0)
