"""Deployments: a flow entrypoint registered with an organization, one Prefect deployment.

Prefect deployment names are unique per flow across the whole Prefect server, so two
organizations could not both have `train`. Ours is scoped: the Prefect deployment of
`acme`'s `train` is `acme.train` (slugs and our deployment names contain no dot, so the
mapping is unambiguous), tagged `org:acme`, on the org's pool for its machine type
(`acme-cpu`). Members see and submit the plain name.

Prefect calls happen outside any database transaction (a SQLite write lock must never
wait on the network): validate and read, end the transaction, upsert in Prefect (both
upserts are idempotent), then write our row and its audit event in one transaction.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import jsonschema  # type: ignore[import-untyped]
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from datasets import code_bundles
from flows import git_sources, ledger
from flows.gateway import PrefectGateway, work_pool_name
from flows.models import ACTIVE_STATES, HELD, Deployment, Job, Project, Schedule
from flows.schedule_kinds import spec_of
from flows.visibility import can_see_deployment, visible_deployments
from orgs import audit, settings_doc
from orgs.config import Settings
from orgs.context import OrgContext
from orgs.db import utcnow
from orgs.models import Organization
from policies.access import Viewer
from policies.errors import Conflict, Invalid, NotFound
from policies.job_states import JobEvent
from policies.names import refuse_bidi
from policies.permissions import Permission

__all__ = [
    "DeploymentSpec",
    "active_job_counts",
    "delete_deployment",
    "get_deployment",
    "list_deployments",
    "prefect_deployment_name",
    "register",
    "validate_parameters",
]

NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# `path/to/file.py:flow` or `package.module:flow` (a flow may be `Class.method`).
ENTRYPOINT_RE: Final = re.compile(
    r"^(?:[\w./ -]{1,400}\.py|[A-Za-z_][\w.]{0,200}):[A-Za-z_][\w.]{0,100}$"
)
TAG_RE: Final = re.compile(r"^[\w.:/=@+-]{1,64}$")
MAX_TAGS: Final = 20
# Where a machine keeps the code: the agent sets it; prefect.yaml uses the same template.
DEFAULT_PULL_STEPS: Final[tuple[Mapping[str, Any], ...]] = (
    {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $CSHARE_FLOWS_DIR }}"}},
)
# A bundle deployment: the agent unpacks the job's bundle into a fresh directory per job
# and names it in CSHARE_CODE_DIR (agents.code_cache), so each job runs its own code.
BUNDLE_PULL_STEPS: Final[tuple[Mapping[str, Any], ...]] = (
    {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $CSHARE_CODE_DIR }}"}},
)


@dataclass(frozen=True)
class DeploymentSpec:
    """What `POST /orgs/{org}/deployments` (and `cshare deploy`) registers."""

    name: str
    entrypoint: str
    machine_type: str
    path: str | None = None
    flow_name: str | None = None
    description: str = ""
    tags: Sequence[str] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)
    parameter_schema: Mapping[str, Any] = field(default_factory=dict)
    job_variables: Mapping[str, Any] = field(default_factory=dict)
    pull_steps: Sequence[Mapping[str, Any]] | None = None
    # At most this many jobs of the deployment hold a slot at once (None: no limit);
    # beyond it a new job is held (`enqueue`) or rejected (`cancel_new`).
    concurrency_limit: int | None = None
    collision_strategy: str = "enqueue"
    version: str | None = None
    # {"kind": "bundle", "digest": "sha256:..."}: the code travels (datasets.code_bundles);
    # {"kind": "git", "repository", "ref", "track"}: pinned to the commit the ref names
    # at registration (flows.git_sources); None: it is on the machines already (`path`,
    # the file's pull steps).
    code: Mapping[str, Any] | None = None


COLLISION_STRATEGIES: Final = ("enqueue", "cancel_new")


def prefect_deployment_name(org_slug: str, name: str) -> str:
    return f"{org_slug}.{name}"


def default_flow_name(entrypoint: str) -> str:
    """Prefect's default flow name: the function's name with '_' as '-'."""
    return entrypoint.rsplit(":", 1)[-1].rsplit(".", 1)[-1].replace("_", "-")


# ------------------------------------------------------------------ validation


def validate_name(name: str) -> str:
    refuse_bidi(name, field="name")
    if not NAME_RE.fullmatch(name):
        raise Invalid(
            "Deployment names are 1-63 lowercase letters, digits, '-' or '_', starting "
            "with a letter or digit.",
            field="name",
        )
    return name


def validate_tags(tags: Sequence[str], *, field_name: str = "tags") -> list[str]:
    if len(tags) > MAX_TAGS:
        raise Invalid(f"At most {MAX_TAGS} tags.", field=field_name)
    for i, tag in enumerate(tags):
        if not TAG_RE.match(tag):
            raise Invalid(
                f"Tag {tag!r} is invalid: 1-64 letters, digits or ._:/=@+- only.",
                field=f"{field_name}.{i}",
            )
    return list(dict.fromkeys(tags))


def _machine_type_offered(org: Organization, machine_type: str) -> None:
    types = settings_doc.load(org.settings or {}).limits.machine_types
    if machine_type not in types:
        raise Invalid(
            f"Machine type '{machine_type}' is not offered by this organization "
            f"(known: {', '.join(sorted(types))}).",
            field="machine_type",
        )


def validate_parameters(
    schema: Mapping[str, Any],
    parameters: Mapping[str, Any],
    *,
    flow: str = "the flow",
    complete: bool = True,
) -> None:
    """Check a run's parameters against the flow's parameter schema (as Prefect makes it).

    Unknown names, wrong types and (when `complete`: a run's parameters, not a
    deployment's defaults) missing required parameters are a 422 whose field is
    `parameters.<name>`. A deployment registered without a schema accepts anything.
    """
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return
    for key in parameters:
        if key not in properties:
            known = ", ".join(sorted(properties)) or "none"
            raise Invalid(
                f"Unknown parameter '{key}' for {flow} (known: {known}).",
                field=f"parameters.{key}",
            )
    required = [k for k in schema.get("required") or () if complete or k in parameters]
    for key in schema.get("required") or ():
        if complete and key not in parameters:
            raise Invalid(f"Missing required parameter '{key}'.", field=f"parameters.{key}")
    try:
        checked = {**schema, "required": required}
        validator_cls = jsonschema.validators.validator_for(checked)
        errors = sorted(
            validator_cls(checked).iter_errors(dict(parameters)),
            key=lambda e: list(e.absolute_path),
        )
    except (jsonschema.SchemaError, jsonschema.exceptions.RefResolutionError) as exc:
        raise Invalid(
            f"The deployment's parameter schema is invalid: {exc}", field="parameter_schema"
        ) from None
    if errors:
        err = errors[0]
        path = [str(p) for p in err.absolute_path]
        name = path[0] if path else "?"
        raise Invalid(
            f"Parameter '{'.'.join(path) or name}' is invalid: {_short(err.message)}",
            field="parameters." + ".".join(path) if path else "parameters",
        )


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validate_spec(org: Organization, spec: DeploymentSpec) -> DeploymentSpec:
    validate_name(spec.name)
    if not ENTRYPOINT_RE.match(spec.entrypoint):
        raise Invalid(
            "The entrypoint must look like 'path/to/file.py:flow' or 'package.module:flow'.",
            field="entrypoint",
        )
    _machine_type_offered(org, spec.machine_type)
    if spec.path is not None and not 1 <= len(spec.path) <= 1024:
        raise Invalid("The path must be 1-1024 characters.", field="path")
    if len(spec.description) > 2000:
        raise Invalid("Descriptions may have at most 2000 characters.", field="description")
    flow_name = spec.flow_name or default_flow_name(spec.entrypoint)
    if not 1 <= len(flow_name) <= 128 or any(c in flow_name for c in "/%&<>"):
        raise Invalid("Flow names are 1-128 characters without / % & < >.", field="flow_name")
    schema = dict(spec.parameter_schema or {})
    if schema:
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise Invalid(
                f"parameter_schema is not a valid JSON schema: {_short(exc.message)}",
                field="parameter_schema",
            ) from None
        validate_parameters(schema, spec.parameters, flow=f"flow '{flow_name}'", complete=False)
    if spec.concurrency_limit is not None and not 1 <= spec.concurrency_limit <= 10_000:
        raise Invalid("concurrency_limit must be 1-10000 (or absent).", field="concurrency_limit")
    if spec.collision_strategy not in COLLISION_STRATEGIES:
        raise Invalid(
            f"collision_strategy must be one of {', '.join(COLLISION_STRATEGIES)}.",
            field="collision_strategy",
        )
    if spec.version is not None and not 1 <= len(spec.version) <= 128:
        raise Invalid("The version must be 1-128 characters.", field="version")
    return DeploymentSpec(
        name=spec.name,
        entrypoint=spec.entrypoint,
        machine_type=spec.machine_type,
        path=spec.path,
        flow_name=flow_name,
        description=spec.description,
        tags=validate_tags(spec.tags),
        parameters=dict(spec.parameters),
        parameter_schema=schema,
        job_variables=dict(spec.job_variables),
        pull_steps=spec.pull_steps,
        concurrency_limit=spec.concurrency_limit,
        collision_strategy=spec.collision_strategy,
        version=spec.version,
        code=spec.code,
    )


# ------------------------------------------------------------------------ reads


def list_deployments(
    session: Session, org: Organization, *, viewer: Viewer | None, project: Project | None = None
) -> list[Deployment]:
    """The org's deployments `viewer` sees (None: all, for the system)."""
    stmt = select(Deployment).where(Deployment.org_id == org.id)
    if viewer is not None:
        stmt = stmt.where(visible_deployments(viewer))
    if project is not None:
        stmt = stmt.where(Deployment.project_id == project.id)
    return list(session.scalars(stmt.order_by(Deployment.name)))


def get_deployment(
    session: Session, org: Organization, name: str, *, viewer: Viewer | None
) -> Deployment:
    dep = find_deployment(session, org, name, viewer=viewer)
    if dep is None:
        raise NotFound(f"No deployment '{name}' in this organization.", code="not_found")
    return dep


def find_deployment(
    session: Session, org: Organization, name: str, *, viewer: Viewer | None
) -> Deployment | None:
    """The deployment `name` if `viewer` sees its project (None: the system, sees all)."""
    dep = session.scalars(
        select(Deployment).where(Deployment.org_id == org.id, Deployment.name == name)
    ).first()
    if dep is not None and viewer is not None and not can_see_deployment(session, viewer, dep):
        return None
    return dep


def _snapshot(dep: Deployment) -> dict[str, Any]:
    return {
        "name": dep.name,
        "entrypoint": dep.entrypoint,
        "machine_type": dep.machine_type,
        "project": dep.project.name if dep.project is not None else None,
        "path": dep.path,
        "flow_name": dep.flow_name,
        "tags": list(dep.tags or []),
        "parameters": dict(dep.parameters or {}),
        "concurrency_limit": dep.concurrency_limit,
        "collision_strategy": dep.collision_strategy,
        "code": dict(dep.code) if dep.code else None,
    }


# ----------------------------------------------------------------------- writes


def register(
    ctx: OrgContext,
    session: Session,
    gateway: PrefectGateway,
    spec: DeploymentSpec,
    *,
    project: Project,
    pool_type: str = "process",
    schedules_backend: str = "control-plane",
    settings: Settings | None = None,
) -> tuple[Deployment, bool]:
    """Create or update the deployment `spec.name` in `project`; returns it and whether
    it is new (`flows.projects.resolve_for_deployment` picks the project).

    Members register (into any project of the org); only the creator or an admin may
    change an existing one, or move it to another project.
    """
    ctx.require(Permission.deployments_register)
    org, slug = ctx.org, ctx.org.slug
    spec = _validate_spec(org, spec)
    git: tuple[str, str, bool] | None = None
    credential: git_sources.GitCredential | None = None
    code: dict[str, Any] | None = None
    if git_sources.is_git(spec.code):
        assert spec.code is not None
        git = git_sources.requested(spec.code)
        credential = git_sources.credential_for(
            session, org, project, url=git[0], settings=settings
        )
    elif spec.code:
        code = code_bundles.require(session, org, dict(spec.code))
    existing = find_deployment(session, org, spec.name, viewer=None)
    if existing is not None:
        ctx.require_own_or(existing.created_by, Permission.deployments_manage_all)
    schedules = (
        list(session.scalars(select(Schedule).where(Schedule.deployment_id == existing.id)))
        if existing is not None
        else []
    )
    session.commit()  # end the read transaction before talking to Git and Prefect
    if git is not None:
        # The network, outside any transaction; a 422 here leaves everything unchanged.
        repository, ref, track = git
        commit = git_sources.resolve(repository, ref, credential, settings=settings)
        code = git_sources.pinned(repository, ref, commit, track)

    pool = ensure_org_pool(gateway, slug, org.name, spec.machine_type, pool_type)
    flow_name = spec.flow_name or default_flow_name(spec.entrypoint)
    prefect_id = gateway.ensure_deployment(
        name=prefect_deployment_name(slug, spec.name),
        flow_name=flow_name,
        entrypoint=spec.entrypoint,
        work_pool_name=pool,
        working_directory=spec.path if spec.path and spec.pull_steps is None and not code else None,
        pull_steps=None
        if spec.path and spec.pull_steps is None and not code
        else _pull_steps(spec),
        # A bundle's digest or a Git commit is its version (what runs); else the file's.
        version=_version_of(code) if code else spec.version,
        parameters=spec.parameters,
        parameter_openapi_schema=spec.parameter_schema or None,
        tags=[*spec.tags, f"org:{slug}"],
        description=spec.description or None,
        job_variables=spec.job_variables,
        # No Prefect concurrency_limit: our admission enforces the limit (held jobs with
        # a reason); Prefect's would park runs we already admitted, behind our back.
    )
    # Prefect's upsert drops the deployment's schedules; put ours back (same slugs).
    recreated: dict[uuid.UUID, uuid.UUID] = {}
    for sched in schedules:
        recreated[sched.id] = gateway.create_deployment_schedule(
            prefect_id,
            schedule=spec_of(sched).prefect_schedule(),
            active=sched.active and schedules_backend == "prefect",
            parameters=sched.parameters,
            slug=schedule_slug(sched.id),
        )

    dep = find_deployment(session, org, spec.name, viewer=None)
    created = dep is None
    before = _snapshot(dep) if dep is not None else None
    if dep is None:
        dep = Deployment(org_id=org.id, name=spec.name, created_by=ctx.user.id)
        session.add(dep)
    dep.project_id = project.id
    dep.project = project
    dep.flow_name = flow_name
    dep.entrypoint = spec.entrypoint
    dep.path = spec.path
    dep.machine_type = spec.machine_type
    dep.description = spec.description
    dep.tags = list(spec.tags)
    dep.parameters = dict(spec.parameters)
    dep.parameter_schema = dict(spec.parameter_schema)
    dep.job_variables = dict(spec.job_variables)
    dep.concurrency_limit = spec.concurrency_limit
    dep.collision_strategy = spec.collision_strategy
    dep.code = code
    dep.prefect_deployment_id = prefect_id
    dep.updated_at = utcnow()
    for sched_id, prefect_schedule_id in recreated.items():
        row = session.get(Schedule, sched_id)
        if row is not None:
            row.prefect_schedule_id = prefect_schedule_id
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            f"Deployment '{spec.name}' was registered by someone else at the same time; try again.",
            code="conflict",
        ) from None
    audit.record(
        session,
        org_id=org.id,
        actor=ctx.user,
        action="deployment.registered" if created else "deployment.updated",
        target_type="deployment",
        target_id=dep.id,
        before=before,
        after=_snapshot(dep),
    )
    session.commit()
    return dep, created


def schedule_slug(schedule_id: uuid.UUID) -> str:
    """The Prefect schedule's slug: names our schedule, so its runs can be attributed."""
    return f"cshare-{schedule_id}"


def _version_of(code: Mapping[str, Any]) -> str:
    return str(code["commit"]) if code.get("kind") == "git" else str(code["digest"])


def _pull_steps(spec: DeploymentSpec) -> list[dict[str, Any]]:
    if spec.code:
        return [dict(step) for step in BUNDLE_PULL_STEPS]
    steps = spec.pull_steps if spec.pull_steps is not None else DEFAULT_PULL_STEPS
    return [dict(step) for step in steps]


def delete_deployment(
    ctx: OrgContext, session: Session, gateway: PrefectGateway, name: str
) -> None:
    """Delete a deployment: its held jobs are cancelled, its schedules removed.

    Refused (409) while any of its jobs holds a slot: Prefect would delete their runs
    with the deployment. Prefect first, then our rows, so no schedule can keep creating
    runs of a deployment we no longer know.
    """
    dep = get_deployment(session, ctx.org, name, viewer=ctx.viewer)
    ctx.require_own_or(dep.created_by, Permission.deployments_manage_all)
    _refuse_if_active(session, dep)
    prefect_id = dep.prefect_deployment_id
    session.commit()
    if prefect_id is not None:
        gateway.delete_deployment(prefect_id)

    dep = get_deployment(session, ctx.org, name, viewer=ctx.viewer)
    _refuse_if_active(session, dep)
    held = list(session.scalars(select(Job).where(Job.deployment_id == dep.id, Job.state == HELD)))
    for job in held:
        # Prefect deleted the held run with the deployment: nothing left to tell it.
        ledger.apply(
            session,
            job,
            JobEvent.observe_cancelled,
            actor=ctx.user,
            reason=f"The deployment '{name}' was deleted.",
            prefect_state="DELETED",
        )
    session.execute(delete(Schedule).where(Schedule.deployment_id == dep.id))
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="deployment.deleted",
        target_type="deployment",
        target_id=dep.id,
        before={**_snapshot(dep), "held_jobs_cancelled": len(held)},
    )
    session.delete(dep)
    session.commit()


def active_job_counts(session: Session, deployment_ids: Sequence[uuid.UUID]) -> dict[str, int]:
    """Deployment name -> number of its jobs holding a slot, for those that have any."""
    if not deployment_ids:
        return {}
    rows = session.execute(
        select(Deployment.name, func.count())
        .join(Job, Job.deployment_id == Deployment.id)
        .where(Deployment.id.in_(deployment_ids), Job.state.in_(tuple(ACTIVE_STATES)))
        .group_by(Deployment.name)
    ).all()
    return {name: int(n) for name, n in rows}


def _refuse_if_active(session: Session, dep: Deployment) -> None:
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.deployment_id == dep.id, Job.state.in_(tuple(ACTIVE_STATES)))
    )
    if active:
        raise Conflict(
            f"Deployment '{dep.name}' has {active} active job(s); cancel them or let them "
            "finish first.",
            code="deployment_in_use",
        )


def ensure_org_pool(
    gateway: PrefectGateway, org_slug: str, org_name: str, machine_type: str, pool_type: str
) -> str:
    """The org's work pool for `machine_type` in Prefect (created or brought up to date);
    its name. The control plane owns the pools: agents never create them."""
    pool = work_pool_name(org_slug, machine_type)
    gateway.ensure_work_pool(
        pool,
        type=pool_type,
        description=(
            f"Compute Share: machines of type '{machine_type}' of the organization "
            f"'{org_name}' ({org_slug})."
        ),
    )
    return pool
