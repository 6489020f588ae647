"""Reading a prefect.yaml the way `prefect deploy` does, into deployments to register.

Honoured per deployment: name, entrypoint, parameters, tags, description, version,
schedules (and the legacy `schedule:`; cron, interval, rrule with timezone, anchor_date,
active, parameters; `paused: true` makes them all inactive), concurrency_limit (an int or
`{limit, collision_strategy}`), work_pool.name (mapped to a machine type),
work_pool.job_variables, pull steps (passed through: the machine runs them), build and
push steps (run here, like `prefect deploy`, their outputs templated into the rest).
YAML anchors and aliases are resolved by the YAML loader; `{{ $ENV_VAR }}` templates are
resolved here except in pull steps (Prefect resolves those on the machine at run time).
Anything else gives a warning naming it, never an error: the file still deploys.

docs/prefect-yaml.md is the user-facing version of this list.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import yaml

from api.cli.output import CliError

__all__ = [
    "Planned",
    "PrefectFile",
    "machine_type_for_pool",
    "parse_prefect_yaml",
    "read_prefect_yaml",
    "run_build_steps",
]

TOP_LEVEL_KEYS: Final = frozenset(
    {"name", "prefect-version", "build", "push", "pull", "deployments", "definitions"}
)
DEPLOYMENT_KEYS: Final = frozenset(
    {
        "name",
        "entrypoint",
        "description",
        "tags",
        "parameters",
        "version",
        "schedule",
        "schedules",
        "paused",
        "concurrency_limit",
        "work_pool",
        "build",
        "push",
        "pull",
        "flow_name",
        "enforce_parameter_schema",
    }
)
# Known to Prefect, not carried out by Compute Share: a warning says so.
NOT_HONOURED: Final = {
    "version_type": "version types are Prefect Cloud's",
    "triggers": "event triggers (automations) are not supported; use `cshare schedule`",
    "sla": "SLAs are Prefect Cloud's",
}
SCHEDULE_KEYS: Final = frozenset(
    {"cron", "interval", "rrule", "timezone", "anchor_date", "active", "parameters"}
)
WELL_KNOWN_PULL_STEPS: Final = frozenset(
    {
        "prefect.deployments.steps.git_clone",
        "prefect.deployments.steps.set_working_directory",
        "prefect.deployments.steps.pip_install_requirements",
    }
)
COLLISION: Final = {"enqueue": "enqueue", "cancel_new": "cancel_new"}
# The pool name the shipped prefect.yaml uses for "whatever --machine-type says".
PLACEHOLDER_POOL: Final = "cshare-default"
_STEP_TEMPLATE: Final = re.compile(r"\{\{\s*([A-Za-z_][\w\-]*(?:\.[\w\-]+)+)\s*\}\}")


@dataclass
class Planned:
    """One deployment to register, as read from the file or the command line."""

    name: str
    entrypoint: str
    base: Path  # where a relative entrypoint is found on this machine
    description: str = ""
    tags: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    job_variables: dict[str, Any] = field(default_factory=dict)
    pull_steps: list[dict[str, Any]] | None = None
    version: str | None = None
    # The file's schedules as the API takes them; None: not from a file (left alone).
    schedules: list[dict[str, Any]] | None = None
    concurrency_limit: int | None = None
    collision_strategy: str = "enqueue"
    machine_type: str | None = None  # from work_pool.name; None: the --machine-type
    build_steps: list[dict[str, Any]] = field(default_factory=list)
    push_steps: list[dict[str, Any]] = field(default_factory=list)

    def body_extras(self) -> dict[str, Any]:
        """What the file adds to `POST /orgs/{org}/deployments` beyond the basics."""
        extras: dict[str, Any] = {}
        if self.version is not None:
            extras["version"] = self.version
        if self.concurrency_limit is not None:
            extras["concurrency_limit"] = self.concurrency_limit
            extras["collision_strategy"] = self.collision_strategy
        if self.schedules is not None:
            extras["schedules"] = self.schedules
        return extras


@dataclass
class PrefectFile:
    deployments: list[Planned]
    warnings: list[str]


def read_prefect_yaml(
    path: Path,
    *,
    org_slug: str | None = None,
    machine_types: Collection[str] | None = None,
) -> PrefectFile:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"Cannot read {path}: {exc}") from None
    return parse_prefect_yaml(
        text,
        path.resolve().parent,
        source=str(path),
        org_slug=org_slug,
        machine_types=machine_types,
    )


def parse_prefect_yaml(
    text: str,
    base: Path,
    *,
    source: str = "prefect.yaml",
    org_slug: str | None = None,
    machine_types: Collection[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> PrefectFile:
    """The deployments of a prefect.yaml and the warnings about what is not honoured."""
    try:
        doc = yaml.safe_load(text)  # anchors and aliases resolved here
    except yaml.YAMLError as exc:
        raise CliError(f"Cannot read {source}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("deployments"), list):
        raise CliError(f"{source} has no 'deployments' list.")
    warnings: list[str] = []
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            warnings.append(f"{source}: unknown top-level key '{key}' ignored.")
    env = dict(os.environ if environ is None else environ)
    top = {k: _steps(doc.get(k), f"{source}: top-level {k}", warnings) for k in ("build", "push")}
    top_pull = doc.get("pull")
    planned: list[Planned] = []
    for i, item in enumerate(doc["deployments"]):
        if not isinstance(item, dict) or not item.get("name") or not item.get("entrypoint"):
            raise CliError(f"{source}: deployment #{i + 1} needs a name and an entrypoint.")
        where = f"{source}: deployment '{item['name']}'"
        planned.append(
            _deployment(item, top, top_pull, base, where, env, org_slug, machine_types, warnings)
        )
    return PrefectFile(planned, warnings)


def _deployment(
    raw: dict[str, Any],
    top: dict[str, list[dict[str, Any]]],
    top_pull: Any,
    base: Path,
    where: str,
    env: dict[str, str],
    org_slug: str | None,
    machine_types: Collection[str] | None,
    warnings: list[str],
) -> Planned:
    for key in raw:
        if key in NOT_HONOURED:
            warnings.append(f"{where}: '{key}' ignored ({NOT_HONOURED[key]}).")
        elif key not in DEPLOYMENT_KEYS:
            warnings.append(f"{where}: unknown key '{key}' ignored.")
    # Pull steps keep their templates (resolved on the machine); the rest is resolved
    # now against the environment, as `prefect deploy` does.
    pull_raw = raw.get("pull", top_pull)
    item = _apply_env({k: v for k, v in raw.items() if k != "pull"}, env)
    pool = item.get("work_pool") if isinstance(item.get("work_pool"), dict) else {}
    for key in pool:
        if key == "work_queue_name" and pool[key] not in (None, "default"):
            warnings.append(f"{where}: work_pool.work_queue_name ignored (one queue per pool).")
        elif key not in ("name", "job_variables", "work_queue_name"):
            warnings.append(f"{where}: unknown key 'work_pool.{key}' ignored.")
    machine_type = None
    if pool.get("name") and pool["name"] != PLACEHOLDER_POOL:
        machine_type, problem = machine_type_for_pool(str(pool["name"]), org_slug, machine_types)
        if problem:
            warnings.append(f"{where}: {problem}")
    planned = Planned(
        name=str(item["name"]),
        entrypoint=str(item["entrypoint"]),
        base=base,
        description=str(item.get("description") or "").strip(),
        tags=_tags(item.get("tags"), where, warnings),
        parameters=dict(item.get("parameters") or {}),
        job_variables=dict(pool.get("job_variables") or {}),
        pull_steps=_pull_steps(pull_raw, where, warnings),
        version=str(item["version"]) if item.get("version") is not None else None,
        schedules=_schedules(item, where, warnings),
        machine_type=machine_type,
        build_steps=_steps(item["build"], f"{where} build", warnings)
        if "build" in item
        else top["build"],
        push_steps=_steps(item["push"], f"{where} push", warnings)
        if "push" in item
        else top["push"],
    )
    planned.concurrency_limit, planned.collision_strategy = _concurrency(
        item.get("concurrency_limit"), where, warnings
    )
    _warn_unresolved(planned, where, warnings)
    return planned


def _apply_env(value: Any, env: Mapping[str, str]) -> Any:
    """`{{ $NAME }}` replaced by the environment variable (left as is when unset)."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            return env.get(m.group(1), m.group(0))

        whole = re.fullmatch(r"\{\{\s*\$(\w+)\s*\}\}", value)
        if whole and whole.group(1) in env:
            return env[whole.group(1)]
        return re.sub(r"\{\{\s*\$(\w+)\s*\}\}", sub, value)
    if isinstance(value, dict):
        return {k: _apply_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_apply_env(v, env) for v in value]
    return value


def _tags(value: Any, where: str, warnings: list[str]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        warnings.append(f"{where}: 'tags' is not a list; ignored.")
        return []
    return [str(t) for t in value]


def _steps(value: Any, where: str, warnings: list[str]) -> list[dict[str, Any]]:
    if value is None or value == {} or value == []:
        return []
    if isinstance(value, dict):  # one step given as a mapping (Prefect wraps it too)
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, dict) for s in value):
        warnings.append(f"{where}: steps must be a list of mappings; ignored.")
        return []
    return [dict(s) for s in value]


def _pull_steps(value: Any, where: str, warnings: list[str]) -> list[dict[str, Any]] | None:
    if value is None:
        return None  # the default: the machine's checkout (or the code bundle)
    steps = _steps(value, f"{where} pull", warnings)
    for step in steps:
        for name in step:
            if name not in WELL_KNOWN_PULL_STEPS:
                warnings.append(
                    f"{where}: pull step '{name}' is passed through as is; it runs on the "
                    "machine only if its package is installed there."
                )
    return steps


GIT_CLONE: Final = "prefect.deployments.steps.git_clone"
_GIT_CLONE_KEYS: Final = frozenset(
    {"repository", "branch", "commit_sha", "access_token", "credentials"}
)


def git_clone_source(
    steps: list[dict[str, Any]] | None, where: str
) -> tuple[dict[str, Any] | None, list[str]]:
    """A deployment whose pull steps clone a Git repository (`git_clone`) deploys from
    Git like `cshare deploy --git URL --ref BRANCH`: ({repository, ref, track}, warnings),
    or (None, []) without such a step. Credentials come from the project (deploy key or
    token), never from the file."""
    steps = steps or []
    for step in steps:
        if GIT_CLONE not in step:
            continue
        args = step[GIT_CLONE] if isinstance(step[GIT_CLONE], dict) else {}
        warnings = []
        if args.get("access_token") or args.get("credentials"):
            warnings.append(
                f"{where}: git_clone's access_token/credentials are not used: the "
                "project's deploy key or token is (cshare project deploy-key / git-token)."
            )
        for key in sorted(set(args) - _GIT_CLONE_KEYS):
            warnings.append(f"{where}: git_clone's '{key}' is not supported; ignored.")
        others = [name for other in steps if other is not step for name in other]
        if others:
            warnings.append(
                f"{where}: with git_clone the other pull steps ({', '.join(others)}) are "
                "not run: the machine checks out the commit itself."
            )
        ref = args.get("commit_sha") or args.get("branch") or "HEAD"
        return {"repository": str(args.get("repository") or ""), "ref": str(ref)}, warnings
    return None, []


def machine_type_for_pool(
    pool: str, org_slug: str | None, machine_types: Collection[str] | None
) -> tuple[str | None, str | None]:
    """(machine type, warning) for a prefect.yaml `work_pool.name`: `<org>-<type>` (the
    pool Compute Share makes per type) or a type name itself; anything else is not
    ours and the deployment uses `--machine-type`."""
    stripped = pool[len(org_slug) + 1 :] if org_slug and pool.startswith(f"{org_slug}-") else None
    if machine_types is None:  # the org's types unknown: trust only `<org>-<type>`
        if stripped:
            return stripped, None
    else:
        for name in (stripped, pool):
            if name and name in machine_types:
                return name, None
    known = f" (machine types: {', '.join(sorted(machine_types))})" if machine_types else ""
    return None, (
        f"work_pool.name '{pool}' is not a Compute Share pool{known}; using --machine-type."
    )


def _concurrency(value: Any, where: str, warnings: list[str]) -> tuple[int | None, str]:
    if value is None:
        return None, "enqueue"
    strategy = "enqueue"
    limit = value
    if isinstance(value, dict):
        for key in value:
            if key == "grace_period_seconds":
                warnings.append(f"{where}: concurrency_limit.grace_period_seconds ignored.")
            elif key not in ("limit", "collision_strategy"):
                warnings.append(f"{where}: unknown key 'concurrency_limit.{key}' ignored.")
        limit = value.get("limit")
        raw = str(value.get("collision_strategy") or "enqueue").lower()
        if raw not in COLLISION:
            warnings.append(
                f"{where}: collision_strategy '{raw}' unknown (ENQUEUE or CANCEL_NEW); "
                "using ENQUEUE."
            )
        strategy = COLLISION.get(raw, "enqueue")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        warnings.append(f"{where}: concurrency_limit {limit!r} is not a positive integer; ignored.")
        return None, "enqueue"
    return limit, strategy


def _schedules(item: dict[str, Any], where: str, warnings: list[str]) -> list[dict[str, Any]]:
    raw: Any = item.get("schedules")
    if item.get("schedule"):
        if raw:
            raise CliError(f"{where}: give 'schedules' or the legacy 'schedule', not both.")
        raw = [item["schedule"]]
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CliError(f"{where}: 'schedules' must be a list.")
    paused = bool(item.get("paused"))
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(raw):
        if not entry:
            continue
        if not isinstance(entry, dict):
            raise CliError(f"{where}: schedule #{i + 1} is not a mapping.")
        out.append(_schedule(entry, f"{where} schedule #{i + 1}", warnings, paused))
    return out


def _schedule(
    entry: dict[str, Any], where: str, warnings: list[str], paused: bool
) -> dict[str, Any]:
    for key in entry:
        if key in ("slug", "replaces"):
            warnings.append(f"{where}: '{key}' ignored (Compute Share names its schedules).")
        elif key == "day_or":
            if entry[key] not in (True, None, "true"):
                warnings.append(f"{where}: day_or false is not supported; cron fields OR'd.")
        elif key not in SCHEDULE_KEYS:
            warnings.append(f"{where}: unknown key '{key}' ignored.")
    kinds = [k for k in ("cron", "interval", "rrule") if entry.get(k) not in (None, "")]
    if len(kinds) != 1:
        raise CliError(f"{where}: give exactly one of cron, interval or rrule.")
    out: dict[str, Any] = {
        "active": bool(entry.get("active", True)) and not paused,
        "parameters": dict(entry.get("parameters") or {}),
    }
    timezone = entry.get("timezone")
    if kinds[0] == "cron":
        out["cron"] = str(entry["cron"])
    elif kinds[0] == "interval":
        out["interval_s"] = _seconds(entry["interval"], where)
        if entry.get("anchor_date") is not None:
            anchor = entry["anchor_date"]
            out["anchor_date"] = anchor.isoformat() if hasattr(anchor, "isoformat") else anchor
    else:
        rrule = str(entry["rrule"])
        try:  # Prefect also takes a JSON RRuleSchedule: {"rrule": ..., "timezone": ...}
            as_json = json.loads(rrule)
        except ValueError:
            as_json = None
        if isinstance(as_json, dict) and "rrule" in as_json:
            rrule = str(as_json["rrule"])
            timezone = timezone or as_json.get("timezone")
        out["rrule"] = rrule
    if timezone:
        out["timezone"] = str(timezone)
    return out


def _seconds(value: Any, where: str) -> float:
    """An interval as Prefect takes it: seconds, `HH:MM:SS` or ISO 8601 (`PT1H`)."""
    if isinstance(value, bool):
        raise CliError(f"{where}: interval {value!r} is not a duration.")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(timedelta).validate_python(str(value)).total_seconds()
    except ValidationError:
        raise CliError(
            f"{where}: interval {value!r} is not a duration (seconds, HH:MM:SS or PT1H)."
        ) from None


def _warn_unresolved(p: Planned, where: str, warnings: list[str]) -> None:
    """Templates left after resolution: Prefect variables and blocks live on the Prefect
    server, which `cshare deploy` does not read; an unset variable stays as written."""
    fields = {
        "description": p.description,
        "tags": p.tags,
        "parameters": p.parameters,
        "version": p.version,
        "work_pool.job_variables": p.job_variables,
        "schedules": p.schedules,
    }
    for name, value in fields.items():
        for placeholder in sorted(set(_placeholders(value))):
            if p.build_steps or p.push_steps:
                continue  # the steps' outputs may resolve it
            warnings.append(
                f"{where}: template '{{{{ {placeholder} }}}}' in {name} is not resolved "
                "(unset variable, or a Prefect variable/block); left as is."
            )


def _placeholders(value: Any) -> list[str]:
    if isinstance(value, str):
        return [m.strip() for m in re.findall(r"\{\{\s*([^}]+?)\s*\}\}", value)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _placeholders(v)]
    if isinstance(value, list):
        return [p for v in value for p in _placeholders(v)]
    return []


# ----------------------------------------------------------------- build / push


def run_build_steps(p: Planned, say: Callable[[str], None]) -> None:
    """Run the deployment's build then push steps (as `prefect deploy` does: in the
    project directory, each step's output under its `id` for the next ones) and
    template their outputs (`{{ step-id.key }}`) into the deployment, pull steps
    included.

    Prefect's own step runner is not used: it resolves `{{ prefect.variables.* }}` and
    blocks through a Prefect API, which `cshare deploy` does not talk to (it would start
    a temporary local Prefect server). Such templates in a step are an error here.
    """
    if not p.build_steps and not p.push_steps:
        return
    outputs: dict[str, Any] = {}
    cwd = Path.cwd()
    try:
        os.chdir(p.base)
        for kind, steps in (("build", p.build_steps), ("push", p.push_steps)):
            if steps:
                say(f"Running the {kind} steps of '{p.name}'...")
            for step in steps:
                _run_step(p.name, step, outputs, say)
    finally:
        os.chdir(cwd)
    p.description = _apply_outputs(p.description, outputs)
    p.tags = _apply_outputs(p.tags, outputs)
    p.parameters = _apply_outputs(p.parameters, outputs)
    p.job_variables = _apply_outputs(p.job_variables, outputs)
    p.version = _apply_outputs(p.version, outputs)
    p.schedules = _apply_outputs(p.schedules, outputs)
    p.pull_steps = _apply_outputs(p.pull_steps, outputs)


def _run_step(
    deployment: str, step: dict[str, Any], outputs: dict[str, Any], say: Callable[[str], None]
) -> None:
    from prefect.deployments.steps.core import _get_function_for_step

    if len(step) != 1:
        raise CliError(f"A build/push step of '{deployment}' has several names: {list(step)}.")
    ((fqn, raw_inputs),) = step.items()
    inputs = dict(raw_inputs or {})
    step_id, requires = inputs.pop("id", None), inputs.pop("requires", None)
    inputs = _apply_env(_apply_outputs(inputs, outputs), os.environ)
    left = [x for x in _placeholders(inputs) if x.startswith("prefect.")]
    if left:
        raise CliError(
            f"Step {fqn} of '{deployment}' uses '{{{{ {left[0]} }}}}': Prefect variables and "
            "blocks are not resolved by `cshare deploy`; use an environment variable."
        )
    say(f" > Running {fqn.rsplit('.', 1)[-1]} step...")
    try:
        func = _get_function_for_step(fqn, requires=requires)
        result = func(**inputs)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except Exception as exc:  # whatever the user's step raises
        raise CliError(f"Step {fqn} of '{deployment}' failed: {exc}") from None
    if isinstance(result, dict):
        if step_id:
            outputs[str(step_id)] = result
        outputs.update(result)


def _apply_outputs(value: Any, outputs: Mapping[str, Any]) -> Any:
    """`{{ step-id.key }}` replaced by that step's output; `{{ $ENV }}` and unknown
    names untouched (so a pull step's machine-side templates survive)."""
    if isinstance(value, str):
        whole = _STEP_TEMPLATE.fullmatch(value.strip())
        if whole:
            found = _lookup(outputs, whole.group(1))
            return value if found is None else found
        return _STEP_TEMPLATE.sub(lambda m: str(_lookup(outputs, m.group(1)) or m.group(0)), value)
    if isinstance(value, dict):
        return {k: _apply_outputs(v, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [_apply_outputs(v, outputs) for v in value]
    return value


def _lookup(outputs: Mapping[str, Any], dotted: str) -> Any:
    current: Any = outputs
    for part in dotted.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return None
        current = current[part]
    return current
