"""Code bundles: HEAD/PUT/GET /orgs/{org}/bundles/{digest}, and a job's code for the
machine that runs it (GET /orgs/{org}/jobs/{id}/code, with the job's token).

`cshare deploy` packs the project (datasets.bundle_format), asks HEAD whether the org has
that digest, PUTs it if not, then registers the deployment naming the digest.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from api.deps import Requires, SessionDep, SettingsDep
from api.job_credentials import JobAware
from api.routers.datasets import PrefetchingResponse, job_in_org, receive_with
from api.schemas import ErrorOut
from datasets import bundle_format, code_bundles, wire
from datasets.access import Caller
from datasets.models import CodeBundle
from flows import git_sources
from flows.models import Deployment
from orgs.context import OrgContext
from policies.access import JobTokenUse
from policies.permissions import Permission

router = APIRouter(tags=["bundles"])

DeploymentsView = Annotated[OrgContext, Depends(Requires(Permission.deployments_view))]
DeploymentsRegister = Annotated[OrgContext, Depends(Requires(Permission.deployments_register))]
# The agent fetches a job's code with that job's token (its own job only); the job's
# owner (or an admin) may download it too.
JobCodeRead = Annotated[
    Caller, Depends(JobAware(Permission.jobs_view_own, use=JobTokenUse.read_code))
]
DigestPath = Annotated[str, Path(max_length=80, description="The bundle's digest, `sha256:<hex>`.")]
FILES_HEADER = "X-Cshare-Files"


class BundleOut(BaseModel):
    digest: str
    size: int
    files: int
    created_at: datetime
    created_by: uuid.UUID | None


def _out(bundle: CodeBundle) -> BundleOut:
    return BundleOut(
        digest=bundle.digest,
        size=bundle.size,
        files=bundle.files,
        created_at=bundle.created_at,
        created_by=bundle.created_by,
    )


def _headers(bundle: CodeBundle) -> dict[str, str]:
    return {
        wire.SHA256_HEADER: bundle_format.digest_hex(bundle.digest),
        "X-Cshare-Size": str(bundle.size),
        FILES_HEADER: str(bundle.files),
        "ETag": f'"{bundle.digest}"',
    }


@router.head(
    "/orgs/{org}/bundles/{digest}",
    responses={404: {"description": "This organization has no bundle with this digest."}},
)
def head_bundle(digest: DigestPath, ctx: DeploymentsView, session: SessionDep) -> Response:
    """200 when the org has the bundle (`cshare deploy` then skips the upload)."""
    bundle = code_bundles.get(ctx, session, digest)
    return Response(status_code=status.HTTP_200_OK, headers=_headers(bundle))


@router.get("/orgs/{org}/bundles/{digest}")
def show_bundle(digest: DigestPath, ctx: DeploymentsView, session: SessionDep) -> BundleOut:
    return _out(code_bundles.get(ctx, session, digest))


@router.put(
    "/orgs/{org}/bundles/{digest}",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The bundle's bytes (the .tar.gz `cshare deploy` packs), streamed; "
            "any content type (the digest, recomputed here, is what counts).",
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in (bundle_format.MEDIA_TYPE, "application/octet-stream")
            },
        }
    },
    responses={
        200: {"description": "The org had this bundle already."},
        413: {
            "model": ErrorOut,
            "description": "`bundle_too_large` (CSHARE_BUNDLE_MAX_BYTES) or "
            "`storage_quota_exceeded`; nothing was stored.",
        },
        422: {"model": ErrorOut, "description": "`checksum_mismatch`: the body is not `digest`."},
    },
)
async def upload_bundle(
    digest: DigestPath,
    request: Request,
    response: Response,
    ctx: DeploymentsRegister,
    session: SessionDep,
    settings: SettingsDep,
    files: Annotated[int, Query(ge=0, description="How many files the bundle holds.")] = 0,
) -> BundleOut:
    """Upload a code bundle (the .tar.gz); the server recomputes its SHA-256 and refuses a
    body that is not `digest`. Counts against the org's storage quota."""
    declared = request.headers.get("content-length", "")
    length = int(declared) if declared.isdecimal() and len(declared) < 20 else None
    plan = await run_in_threadpool(
        code_bundles.plan_upload,
        ctx,
        session,
        settings,
        digest,
        files=files,
        content_length=length,
    )
    org = ctx.org
    await run_in_threadpool(session.close)  # nothing of the database held while bytes move

    def consume(reader: wire.Reader) -> int:
        return code_bundles.receive(plan, reader)

    size = await receive_with(request, consume)
    bundle, created = await run_in_threadpool(code_bundles.commit, session, plan, size, org=org)
    if not created:
        response.status_code = status.HTTP_200_OK
    return _out(bundle)


@router.get(
    "/orgs/{org}/jobs/{id}/code",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The job's code bundle (.tar.gz); `X-Content-SHA256` is its "
            "digest's hex part. Verify it: never run a bundle whose hash differs.",
            "content": {
                bundle_format.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object"}},
            },
        },
        404: {"description": "No such job here, or it has no code bundle."},
    },
)
def job_code(
    job_id: Annotated[uuid.UUID, Path(alias="id")],
    caller: JobCodeRead,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """The code bundle the job runs (copied from its deployment when it was submitted);
    for a Git job, JSON `{kind: git, repository, commit, credential}` where the
    credential (the project's deploy key or token) is given to the job's own token only."""
    job = job_in_org(session, caller, job_id)
    code: dict[str, Any] | None = job.code
    if git_sources.is_git(code):
        assert code is not None
        dep = session.get(Deployment, job.deployment_id) if job.deployment_id else None
        source = git_sources.machine_source(
            session,
            caller.org,
            dep.project if dep is not None else None,
            code,
            for_machine=caller.job is not None and caller.job.id == job.id,
            settings=settings,
        )
        session.close()
        return JSONResponse(source, headers={"Cache-Control": "no-store"})
    bundle, chunks = code_bundles.open_bundle(session, settings, job.org_id, code)
    headers = _headers(bundle)
    headers["Content-Length"] = str(bundle.size)
    session.close()
    return PrefetchingResponse(chunks, media_type=bundle_format.MEDIA_TYPE, headers=headers)
