"""Command jobs: a command run in a container image, without writing a flow.

`cshare job run --image REF -- COMMAND...` is `POST /orgs/{org}/jobs` with `image` and
`command`. It is an ordinary job for everything else (admission, limits, dispatch,
claims, cancel, the ledger): its flow run belongs to a built-in deployment per machine
type, `cshare-command-<type>` (entrypoint `flows/library/container.py`), created on
first use on the org's pool for that type. The worker that claims it sees the
container in the claim answer (`container_spec`) and runs the command with Docker
(agents/container.py) instead of the flow.

The job keeps `image = {ref, digest}`: the ref at submission, the digest (`sha256:...`)
reported by the machine after the pull (`record_digest`, through the ledger), which is
what lineage shows and a rerun pins.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flows import jobs, ledger
from flows.deployments import ensure_org_pool, find_deployment, prefect_deployment_name
from flows.gateway import PrefectGateway
from flows.job_data import declared_outputs
from flows.jobs import Deferred, SubmitSpec
from flows.models import Deployment, Job
from flows.projects import ensure_default
from orgs import audit, registries, settings_doc
from orgs.context import OrgContext
from policies.errors import Conflict, Invalid
from policies.permissions import Permission

__all__ = [
    "COMMAND_DEPLOYMENT_PREFIX",
    "command_deployment_name",
    "container_spec",
    "image_ref",
    "prepare_command",
    "record_digest",
]

COMMAND_DEPLOYMENT_PREFIX: Final = "cshare-command-"
ENTRYPOINT: Final = "flows/library/container.py:container_command"
FLOW_NAME: Final = "container-command"
MAX_ARGS: Final = 256
MAX_ARG_CHARS: Final = 8192
MAX_CPUS: Final = 1024.0
DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")


def command_deployment_name(machine_type: str) -> str:
    return f"{COMMAND_DEPLOYMENT_PREFIX}{machine_type.replace('_', '-')}"


def _check_command(command: Sequence[str] | None) -> list[str]:
    if not command:
        raise Invalid(
            "A command job needs the command to run: `cshare job run --image REF -- CMD ARG...`.",
            field="command",
        )
    if len(command) > MAX_ARGS:
        raise Invalid(f"At most {MAX_ARGS} command arguments.", field="command")
    for i, arg in enumerate(command):
        if not isinstance(arg, str) or len(arg) > MAX_ARG_CHARS or "\x00" in arg:
            raise Invalid(
                f"Command argument {i} must be text of at most {MAX_ARG_CHARS} characters "
                "without NUL.",
                field=f"command.{i}",
            )
    return list(command)


def _check_cpus(cpus: float | None) -> float | None:
    if cpus is None:
        return None
    if not 0.01 <= cpus <= MAX_CPUS:
        raise Invalid(f"cpus must be between 0.01 and {MAX_CPUS:g}.", field="cpus")
    return float(cpus)


def ensure_command_deployment(
    ctx: OrgContext,
    session: Session,
    gateway: PrefectGateway,
    machine_type: str,
    *,
    pool_type: str,
) -> Deployment:
    """The org's built-in command deployment for `machine_type`, made on first use.

    Nobody's own (`created_by` None: only admins may delete it); Prefect first, outside
    any transaction, then the row with its audit event.
    """
    name = command_deployment_name(machine_type)
    existing = find_deployment(session, ctx.org, name, viewer=None)
    if existing is not None and existing.prefect_deployment_id is not None:
        return existing
    types = settings_doc.load(ctx.org.settings or {}).limits.machine_types
    if machine_type not in types:
        raise Invalid(
            f"Machine type '{machine_type}' is not offered by this organization "
            f"(known: {', '.join(sorted(types))}).",
            field="machine_type",
        )
    slug, org_name = ctx.org.slug, ctx.org.name
    session.commit()  # no transaction open while Prefect is called
    pool = ensure_org_pool(gateway, slug, org_name, machine_type, pool_type)
    description = (
        "Built in: command jobs in a container image (`cshare job run --image`), "
        f"on '{machine_type}' machines that reach a Docker engine."
    )
    prefect_id = gateway.ensure_deployment(
        name=prefect_deployment_name(slug, name),
        flow_name=FLOW_NAME,
        entrypoint=ENTRYPOINT,
        work_pool_name=pool,
        pull_steps=[],
        tags=[f"org:{slug}", "cshare:container"],
        description=description,
    )
    dep = find_deployment(session, ctx.org, name, viewer=None)
    if dep is not None:
        dep.prefect_deployment_id = prefect_id
        session.commit()
        return dep
    project = ensure_default(session, ctx.org)
    dep = Deployment(
        org_id=ctx.org.id,
        project_id=project.id,
        name=name,
        flow_name=FLOW_NAME,
        entrypoint=ENTRYPOINT,
        machine_type=machine_type,
        description=description,
        tags=["cshare:container"],
        prefect_deployment_id=prefect_id,
        created_by=None,
    )
    session.add(dep)
    try:
        session.flush()
    except IntegrityError:  # made by a concurrent submission: use theirs
        session.rollback()
        made = find_deployment(session, ctx.org, name, viewer=None)
        if made is None:
            raise
        return made
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="deployment.registered",
        target_type="deployment",
        target_id=dep.id,
        after={"name": name, "machine_type": machine_type, "built_in": "container"},
    )
    session.commit()
    return dep


def prepare_command(
    ctx: OrgContext,
    session: Session,
    gateway: PrefectGateway,
    spec: SubmitSpec,
    *,
    image: str,
    command: Sequence[str] | None,
    cpus: float | None,
    pool_type: str,
) -> SubmitSpec:
    """The submission of a command job, on its built-in deployment: checks the image
    reference, the command and cpus (422 naming the field), then `flows.jobs.submit`
    admits it like any other job."""
    ctx.require(Permission.jobs_submit)
    if spec.deployment:
        raise Invalid(
            "Give either a deployment (a flow) or an image and a command, not both.",
            field="deployment",
        )
    if spec.parameters:
        raise Invalid(
            "A command job takes no parameters: put them in the command.", field="parameters"
        )
    registries.image_path(image)
    args = _check_command(command)
    cores = _check_cpus(cpus)
    machine_type = spec.machine_type or "cpu"
    dep = ensure_command_deployment(ctx, session, gateway, machine_type, pool_type=pool_type)
    parameters: dict[str, Any] = {"image": image, "command": args}
    if cores is not None:
        parameters["cpus"] = cores
    return dataclasses.replace(
        spec,
        deployment=dep.name,
        machine_type=machine_type,
        parameters=parameters,
        image={"ref": image, "digest": None},
    )


def image_ref(job: Job) -> str:
    """The job's image reference; 409 for a job that is not a container job."""
    ref = (job.image or {}).get("ref")
    if not isinstance(ref, str) or not ref:
        raise Conflict(f"Job {job.id} is not a container job.", code="not_a_container_job")
    return ref


def container_spec(job: Job) -> dict[str, Any] | None:
    """What the machine needs to run a container job (None: a flow job)."""
    if not job.image:
        return None
    params = job.parameters or {}
    outputs = sorted(declared_outputs(job) or ())
    return {
        "image": image_ref(job),
        "command": [str(a) for a in params.get("command") or []],
        "cpus": params.get("cpus"),
        "output": outputs[0] if outputs else None,
    }


def pinned_ref(image: Mapping[str, Any]) -> str:
    """`repo@sha256:...` once the digest is known (the tag dropped: the digest decides),
    else the reference as submitted."""
    ref, digest = str(image.get("ref") or ""), image.get("digest")
    if not digest:
        return ref
    name = ref.split("@", 1)[0]
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")]
    return f"{name}@{digest}"


def rerun_fields(job: Job) -> dict[str, Any] | None:
    """What reruns a command job exactly: the image by digest, the same command and cpus
    (a `POST /orgs/{org}/jobs` body's fields); None for a flow job."""
    if not job.image:
        return None
    params = job.parameters or {}
    fields: dict[str, Any] = {
        "image": pinned_ref(job.image),
        "command": [str(a) for a in params.get("command") or []],
    }
    if params.get("cpus") is not None:
        fields["cpus"] = params["cpus"]
    return fields


def record_digest(session: Session, job: Job, digest: str) -> None:
    """The image digest the machine pulled (write-once). No commit."""
    if not DIGEST_RE.fullmatch(digest):
        raise Invalid("The image digest must be sha256:<64 hex>.", field="image_digest")
    ref = image_ref(job)
    known = (job.image or {}).get("digest")
    if known and known != digest:
        raise Conflict(
            "The job's image digest is already recorded; a run's lineage is written once.",
            code="lineage_written",
        )
    ledger.record_image(session, job, {"ref": ref, "digest": digest})


def rerun(
    ctx: OrgContext,
    session: Session,
    gateway: PrefectGateway,
    job_id: uuid.UUID,
    *,
    pool_type: str,
    defer: Deferred | None = None,
) -> Job:
    """Run a job again exactly (`flows.jobs.rerun`); a command job in the very image it
    pulled (by digest), with the same command, cpus, resources and inputs."""
    old = jobs.get_job(ctx, session, job_id)
    fields = rerun_fields(old)
    if fields is None:
        return jobs.rerun(ctx, session, gateway, job_id, defer=defer)
    ctx.require(Permission.jobs_submit)
    base = dataclasses.replace(jobs.rerun_spec(session, old), deployment="", parameters={})
    spec = prepare_command(
        ctx,
        session,
        gateway,
        base,
        image=fields["image"],
        command=fields["command"],
        cpus=fields.get("cpus"),
        pool_type=pool_type,
    )
    job, _ = jobs.submit(ctx, session, gateway, spec, defer=defer)
    return job
