"""Datasets: catalog, streamed upload and download, access, delete, the org's data store,
and a job's inputs.

Uploads and downloads never hold a database session while bytes move: the request's
session is closed once the route has decided what to do, and reopened (a new, short
transaction) to record the result. Bodies are streamed in bounded chunks, never read
whole.

A download is verified while it streams. If the stored bytes do not match their
checksum, the last chunk is withheld and the stream is aborted: the client gets fewer
bytes than `Content-Length` (a broken transfer, never complete-looking bad data) and the
server logs the mismatch.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from functools import partial
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

import anyio
import anyio.from_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from api.deps import Requires, SessionDep, SettingsDep, get_org_context
from api.job_credentials import JobAware
from api.schemas import ErrorOut, Page, PublicUserOut
from datasets import catalog, stores, wire
from datasets.access import Caller, require_output
from datasets.models import KIND_DIRECTORY, KIND_FILE, Dataset, DatasetVersion
from flows import job_data, lineage, projects, visibility
from flows.models import Job
from orgs.config import Settings
from orgs.context import OrgContext
from orgs.db import Database
from orgs.models import User
from policies.access import JobTokenUse
from policies.errors import Invalid, NotFound
from policies.permissions import Permission

router = APIRouter(tags=["datasets"])


class MemberCaller(Requires):
    """`Requires(permission)` as the catalog's `Caller` (a member's token only)."""

    async def __call__(  # type: ignore[override]
        self, ctx: Annotated[OrgContext, Depends(get_org_context)]
    ) -> Caller:
        ctx.require(self.permission)
        return Caller(ctx)


# A job token reads its inputs and writes its outputs here, and nothing else
# (api.job_credentials); every other dataset route is for members only.
DatasetsRead = Annotated[Caller, Depends(MemberCaller(Permission.datasets_read))]
DatasetsCreate = Annotated[Caller, Depends(MemberCaller(Permission.datasets_create))]
StorageConfigure = Annotated[Caller, Depends(MemberCaller(Permission.storage_configure))]
InputRead = Annotated[
    Caller, Depends(JobAware(Permission.datasets_read, use=JobTokenUse.read_inputs))
]
OutputCreate = Annotated[
    Caller, Depends(JobAware(Permission.datasets_create, use=JobTokenUse.write_outputs))
]
JobInputsView = Annotated[
    Caller, Depends(JobAware(Permission.jobs_view_own, use=JobTokenUse.read_inputs))
]
NameParam = Annotated[str, Path(description="The dataset's name.")]
JobId = Annotated[uuid.UUID, Path(alias="id", description="The job id.")]


# --------------------------------------------------------------------------- bodies


class DatasetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Bounded for parsing only; the real rule (datasets.names) answers with its sentence.
    name: str = Field(max_length=1000)
    description: str | None = Field(default=None, max_length=10_000)
    visibility: Literal["org", "restricted"] = "org"
    members: list[str] = Field(
        default_factory=list, max_length=1000, description="User ids or names (restricted)."
    )


class AccessIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    visibility: Literal["org", "restricted"] | None = None
    members: list[str] | None = Field(
        default=None, max_length=1000, description="Replaces the list: user ids or names."
    )
    teams: list[str] | None = Field(
        default=None,
        max_length=100,
        description="Replaces the team list: members of these teams read it too.",
    )


class VersionRef(BaseModel):
    version: int
    sha256: str
    size: int
    kind: str
    created_at: datetime


class DatasetOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    visibility: str
    created_by: PublicUserOut | None
    created_at: datetime
    version_count: int = 0
    size: int = Field(0, description="Bytes of all live versions (before deduplication).")
    latest_version: VersionRef | None = None


class VersionOut(BaseModel):
    dataset: str
    version: int
    kind: str
    filename: str
    sha256: str
    size: int
    file_count: int
    description: str
    created_by: PublicUserOut | None
    created_at: datetime
    produced_by_job_id: uuid.UUID | None
    used_by_job_ids: list[uuid.UUID] = Field(default_factory=list)
    used_by_count: int = 0
    tombstoned_at: datetime | None = None
    download_path: str | None = None


class DatasetDetailOut(DatasetOut):
    members: list[PublicUserOut] = Field(default_factory=list)
    can_write: bool = False
    versions: list[VersionOut] = Field(default_factory=list)


class AccessOut(BaseModel):
    name: str
    visibility: str
    members: list[PublicUserOut]
    teams: list[str] = Field(default_factory=list)


class DeleteOut(BaseModel):
    name: str
    deleted_versions: int
    tombstoned_versions: int = Field(description="Kept as records because jobs used them.")
    purged_objects: int = Field(description="Stored objects removed (nothing else used them).")


class DatastoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["default", "s3", "swift", "azure", "gcs"] = Field(
        description="s3 (AWS or any S3-compatible endpoint), swift (OpenStack Swift's S3 "
        "API; endpoint_url required), azure (Blob Storage), gcs (Google Cloud Storage), "
        "or default (the installation's store)."
    )
    bucket: str | None = Field(default=None, max_length=63, description="s3, swift, gcs.")
    account: str | None = Field(default=None, max_length=24, description="azure: the account.")
    container: str | None = Field(default=None, max_length=63, description="azure.")
    prefix: str | None = Field(default=None, max_length=512)
    endpoint_url: str | None = Field(default=None, max_length=512)
    region: str | None = Field(default=None, max_length=32)
    profile: str | None = Field(
        default=None,
        max_length=64,
        description="An AWS profile of the API server (only where the operator allows "
        "org stores the server's credentials).",
    )
    access_key_id: str | None = Field(
        default=None, max_length=128, description="The bucket's access key (with the secret)."
    )
    secret_access_key: str | None = Field(
        default=None, max_length=256, description="Stored with the store, never returned."
    )
    session_token: str | None = Field(default=None, max_length=4096)
    account_key: str | None = Field(
        default=None, max_length=256, description="azure: stored, never returned."
    )
    sas_token: str | None = Field(
        default=None, max_length=4096, description="azure: stored, never returned."
    )
    service_account_json: str | None = Field(
        default=None,
        max_length=16384,
        description="gcs: a service account's JSON key; stored, never returned.",
    )
    verify: bool = Field(default=True, description="Write and read back a probe first.")


class DatastoreOut(BaseModel):
    kind: str
    id: uuid.UUID | None
    config: dict[str, str]
    created_at: datetime | None
    access_key_id: str | None = Field(
        default=None,
        description="What may be shown of the stored credentials: an S3 key's id, a GCS "
        "service account's e-mail, or which Azure credential (never a secret).",
    )


class JobInputOut(BaseModel):
    name: str = Field(description="What the flow passes to flows.runtime.input_path().")
    dataset: str
    version: int
    kind: str
    filename: str
    sha256: str
    size: int
    download_path: str


class JobInputsOut(BaseModel):
    job_id: uuid.UUID
    items: list[JobInputOut]


# --------------------------------------------------------------------------- helpers


def _user(u: User | None) -> PublicUserOut | None:
    return PublicUserOut(id=u.id, name=u.name) if u is not None else None


def _ref(v: DatasetVersion | None) -> VersionRef | None:
    if v is None:
        return None
    return VersionRef(
        version=v.version, sha256=v.sha256, size=v.size, kind=v.kind, created_at=v.created_at
    )


def _dataset_out(
    d: Dataset, creator: User | None, count: int, size: int, latest: DatasetVersion | None
) -> DatasetOut:
    return DatasetOut(
        id=d.id,
        name=d.name,
        description=d.description,
        visibility=d.visibility,
        created_by=_user(creator),
        created_at=d.created_at,
        version_count=count,
        size=size,
        latest_version=_ref(latest),
    )


def _version_out(
    slug: str, dataset: str, v: DatasetVersion, creator: User | None, info: Any = None
) -> VersionOut:
    return VersionOut(
        dataset=dataset,
        version=v.version,
        kind=v.kind,
        filename=v.filename,
        sha256=v.sha256,
        size=v.size,
        file_count=v.file_count,
        description=v.description,
        created_by=_user(creator),
        created_at=v.created_at,
        produced_by_job_id=v.produced_by_job_id,
        used_by_job_ids=list(info.used_by) if info else [],
        used_by_count=info.used_by_count if info else 0,
        tombstoned_at=v.tombstoned_at,
        download_path=None
        if v.tombstoned_at
        else f"/orgs/{slug}/datasets/{dataset}/versions/{v.version}/download",
    )


# Batches in flight between the network and the worker thread, each about `BATCH`
# bytes: the two sides overlap (one receives or sends while the other hashes and
# reads or writes) and memory stays bounded at about DEPTH * BATCH per transfer.
BATCH = 1 << 20
DEPTH = 8
_Item = bytes | Exception | None  # None: the body arrived whole
_T = TypeVar("_T")


async def _pump_body(stream: AsyncIterator[bytes], tx: MemoryObjectSendStream[_Item]) -> None:
    """Forward the request body in ~BATCH pieces; a failure is forwarded as an item."""
    async with tx:
        parts: list[bytes] = []
        got = 0
        try:
            async for chunk in stream:
                parts.append(chunk)
                got += len(chunk)
                if got >= BATCH:
                    await tx.send(parts[0] if len(parts) == 1 else b"".join(parts))
                    parts, got = [], 0
            if parts:
                await tx.send(b"".join(parts))
            await tx.send(None)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # the consumer stopped (it failed); nothing more to deliver
        except Exception as exc:  # ClientDisconnect, a broken connection, ...
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await tx.send(exc)


def _thread_chunks(rx: MemoryObjectReceiveStream[_Item]) -> Iterator[bytes]:
    """The pumped body, for code in a worker thread. A client that went away becomes
    `Invalid(upload_interrupted)`: nothing half-received is ever committed."""
    while True:
        try:
            item = anyio.from_thread.run(rx.receive)
        except anyio.EndOfStream:
            # Closed without the end mark: the pump was cancelled (a shutdown), so the
            # body is not known to be whole.
            item = anyio.EndOfStream()
        if item is None:
            return
        if isinstance(item, Exception):
            raise Invalid(
                "The upload ended before the whole body arrived; nothing was stored.",
                field="body",
                code="upload_interrupted",
            ) from item
        yield item


async def receive_body(request: Request, plan: catalog.UploadPlan) -> catalog.Received:
    """Stream the request body into the store through a worker thread."""
    return await receive_with(request, partial(catalog.receive, plan))


async def receive_with(request: Request, consume: Callable[[wire.Reader], _T]) -> _T:
    """Hand the request body, streamed, to `consume` in a worker thread; its result."""
    tx, rx = anyio.create_memory_object_stream[_Item](DEPTH)
    result: _T | None = None
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_pump_body, request.stream(), tx)
        with rx:
            try:
                reader = wire.IterReader(_thread_chunks(rx))
                result = await anyio.to_thread.run_sync(consume, reader)
            except Exception as exc:
                error = exc
                tg.cancel_scope.cancel()
    if error is not None:
        raise error
    assert result is not None
    return result


class PrefetchingResponse(StreamingResponse):
    """A streamed body produced by a worker thread up to DEPTH chunks ahead of the
    socket, so reading and hashing overlap with sending.

    An error while producing (a checksum mismatch) aborts the response mid-stream.
    """

    def __init__(self, chunks: Iterator[bytes], **kwargs: Any) -> None:
        super().__init__(iter(()), **kwargs)
        self._chunks = chunks

    def _produce(self, tx: MemoryObjectSendStream[bytes]) -> None:
        try:
            for chunk in self._chunks:
                anyio.from_thread.run(tx.send, chunk)
        finally:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()  # the open object, at once, even when the client left early

    async def _producer(self, tx: MemoryObjectSendStream[bytes]) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            async with tx:
                await anyio.to_thread.run_sync(self._produce, tx)

    async def stream_response(self, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        tx, rx = anyio.create_memory_object_stream[bytes](DEPTH)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._producer, tx)
                with rx:
                    async for chunk in rx:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ExceptionGroup as group:
            raise group.exceptions[0] from None  # the cause, not the task group's wrapper
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _content_disposition(filename: str) -> str:
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def job_in_org(session: Session, caller: Caller, job_id: uuid.UUID) -> Job:
    """The job if the caller may see it: their own, any for admins, the token's own."""
    job = visibility.visible_job(session, caller.viewer, job_id)
    if job is None:
        raise NotFound(f"No job {job_id} in this organization.", code="job_not_found")
    return job


# --------------------------------------------------------------------------- routes


@router.post("/orgs/{org}/datasets", status_code=status.HTTP_201_CREATED)
def create_dataset(body: DatasetIn, caller: OutputCreate, session: SessionDep) -> DatasetOut:
    """A new dataset (members; or a job's token, for an output it declared)."""
    require_output(caller, body.name)
    dataset = catalog.create_dataset(
        caller.ctx,
        session,
        name=body.name,
        description=body.description,
        visibility=body.visibility,
        members=body.members,
    )
    return _dataset_out(dataset, caller.user, 0, 0, None)


@router.get("/orgs/{org}/datasets")
def list_datasets(
    caller: DatasetsRead,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page[DatasetOut]:
    rows, total = catalog.list_datasets(session, caller.ctx, limit=limit, offset=offset)
    items = [
        _dataset_out(r.dataset, r.creator, r.version_count, r.total_size, r.latest) for r in rows
    ]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.get("/orgs/{org}/datasets/{name}")
def show_dataset(
    name: NameParam,
    caller: DatasetsRead,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Newest versions shown.")] = 1000,
) -> DatasetDetailOut:
    dataset = catalog.find_dataset(session, caller.ctx, name)
    detail = catalog.dataset_detail(
        session, caller.ctx, dataset, jobs_using=lineage.jobs_using, limit=limit
    )
    live = [i.version for i in detail.versions if i.version.tombstoned_at is None]
    slug = caller.org.slug
    return DatasetDetailOut(
        **_dataset_out(
            dataset,
            detail.creator,
            len(live),
            sum(v.size for v in live),
            max(live, key=lambda v: v.version, default=None),
        ).model_dump(),
        members=[PublicUserOut(id=u.id, name=u.name) for u in detail.members],
        can_write=detail.can_write,
        versions=[
            _version_out(slug, dataset.name, i.version, i.creator, i) for i in detail.versions
        ],
    )


UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "description": (
            "The version's bytes, streamed. `application/x-tar` (an uncompressed or gzipped "
            "tar of regular files) makes a directory version; anything else a file version."
        ),
        "content": {
            wire.FILE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
            wire.TAR_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _content_length(request: Request) -> int | None:
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdecimal() and len(declared) < 20 else None


@router.post(
    "/orgs/{org}/datasets/{name}/versions",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=UPLOAD_BODY,
    responses={
        200: {"description": "Same content as the latest version: that version."},
        413: {
            "model": ErrorOut,
            "description": "`storage_quota_exceeded`: the org's storage.max_bytes would be "
            "passed (`used_bytes`, `limit_bytes`); nothing was stored.",
        },
    },
)
async def upload_version(
    name: NameParam,
    request: Request,
    response: Response,
    caller: OutputCreate,
    session: SessionDep,
    settings: SettingsDep,
    filename: Annotated[
        str | None, Query(max_length=1000, description="File name (default: the dataset's).")
    ] = None,
    description: Annotated[str | None, Query(max_length=10_000)] = None,
    job: Annotated[
        uuid.UUID | None,
        Query(
            description="The job that produced this (lineage): only with that job's own "
            "token, which marks its uploads as its outputs anyway; a member's token is "
            "refused (403 lineage_job_only)."
        ),
    ] = None,
    x_content_sha256: Annotated[
        str | None,
        Header(
            alias="X-Content-SHA256",
            max_length=100,
            description="The checksum the version must get (a file's SHA-256, or a "
            "directory's manifest SHA-256); the upload is refused if it differs.",
        ),
    ] = None,
) -> VersionOut:
    """Upload a new version (streamed). It becomes visible only once every byte is stored
    and every checksum verified. With a job token it is that job's output: only an output
    the job declared, and once per dataset (409 `output_written`)."""
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    kind = KIND_DIRECTORY if media in (wire.TAR_MEDIA_TYPE, "application/tar") else KIND_FILE
    producer = await run_in_threadpool(job_data.output_job, session, caller, job)
    plan = await run_in_threadpool(
        catalog.plan_upload,
        session,
        settings,
        caller,
        name,
        kind=kind,
        filename=filename,
        description=description,
        producer=producer,
        expected_sha256=x_content_sha256,
        content_length=_content_length(request),
    )
    # Release the connection (and SQLite's write lock) before the first byte is read.
    await run_in_threadpool(session.close)
    received = await receive_body(request, plan)
    version, created = await run_in_threadpool(catalog.commit_upload, session, plan, received)
    if not created:
        response.status_code = status.HTTP_200_OK
    return _version_out(caller.org.slug, plan.dataset_name, version, plan.actor)


DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "The bytes (a file) or a tar stream (a directory). `X-Content-SHA256` is the "
            "version's checksum. A stream that ends before Content-Length means the stored "
            "bytes failed verification; never use a short download."
        ),
        "content": {
            wire.FILE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
            wire.TAR_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    },
    503: {"description": "The store is unreachable, or the bytes are missing from it."},
}


@router.get(
    "/orgs/{org}/datasets/{name}/versions/{version}/download",
    response_class=StreamingResponse,
    responses=DOWNLOAD_RESPONSES,
)
def download_version(
    name: NameParam,
    version: Annotated[str, Path(max_length=20, description="A number, or 'latest'.")],
    caller: InputRead,
    session: SessionDep,
    settings: SettingsDep,
) -> StreamingResponse:
    plan = catalog.plan_download(session, settings, caller, name, catalog.parse_version(version))
    session.close()  # nothing of the database is held while the bytes stream
    filename = plan.filename if plan.kind == KIND_FILE else f"{plan.filename}.tar"
    headers = {
        "Content-Length": str(plan.content_length),
        "ETag": f'"{plan.sha256}"',
        wire.SHA256_HEADER: plan.sha256,
        "X-Cshare-Kind": plan.kind,
        "X-Cshare-Version": str(plan.version),
        "Content-Disposition": _content_disposition(filename),
    }
    return PrefetchingResponse(catalog.stream(plan), media_type=plan.media_type, headers=headers)


@router.put("/orgs/{org}/datasets/{name}/access")
def set_access(
    name: NameParam, body: AccessIn, caller: DatasetsCreate, session: SessionDep
) -> AccessOut:
    """Visibility and the member list of a restricted dataset (creator or admin)."""
    dataset = catalog.find_dataset(session, caller.ctx, name)
    catalog.set_access(
        caller.ctx,
        session,
        dataset,
        visibility=body.visibility,
        members=body.members,
        team_names=body.teams,
    )
    members = catalog.access_members(session, dataset.id)
    return AccessOut(
        name=dataset.name,
        visibility=dataset.visibility,
        members=[PublicUserOut(id=u.id, name=u.name) for u in members],
        teams=catalog.access_teams(session, dataset.id),
    )


@router.delete("/orgs/{org}/datasets/{name}")
def delete_dataset(
    name: NameParam, caller: DatasetsCreate, session: SessionDep, settings: SettingsDep
) -> DeleteOut:
    """Delete a dataset (creator or admin). Versions used by jobs stay as tombstones."""
    dataset = catalog.find_dataset(session, caller.ctx, name)
    result = catalog.delete_dataset(session, settings, caller.ctx, dataset)
    return DeleteOut(
        name=name,
        deleted_versions=result.deleted_versions,
        tombstoned_versions=result.tombstoned_versions,
        purged_objects=result.purged_objects,
    )


def _datastore_out(data: dict[str, Any]) -> DatastoreOut:
    return DatastoreOut(
        kind=data["kind"],
        id=data["id"],
        config={k: str(v) for k, v in data["config"].items()},
        created_at=data["created_at"],
        access_key_id=data["access_key_id"],
    )


@router.get("/orgs/{org}/datastore")
def show_datastore(
    caller: DatasetsRead, session: SessionDep, settings: SettingsDep
) -> DatastoreOut:
    """Where the organization's new uploads go (never a secret)."""
    return _datastore_out(stores.describe(session, settings, caller.org.id))


@router.put("/orgs/{org}/datastore")
def configure_datastore(
    body: DatastoreIn, caller: StorageConfigure, session: SessionDep, settings: SettingsDep
) -> DatastoreOut:
    """Use the organization's own S3 bucket, Swift container (S3 API), Azure Blob
    container or GCS bucket (or the default store again) for new uploads. Requests are
    signed with the credentials given here, or not at all; the API server's own cloud
    credentials only where the operator allows it (S3)."""
    return apply_datastore(body, caller.ctx, session, settings, None)


def apply_datastore(
    body: DatastoreIn,
    ctx: OrgContext,
    session: Session,
    settings: Settings,
    project_id: uuid.UUID | None,
) -> DatastoreOut:
    keys: stores.StoreKeys | None
    config: dict[str, Any] = {}
    if body.kind == stores.KIND_AZURE:
        keys = stores.validate_azure_keys(body.account_key, body.sas_token)
        config = {
            "account": body.account,
            "container": body.container,
            "prefix": body.prefix,
            "endpoint_url": body.endpoint_url,
        }
    elif body.kind == stores.KIND_GCS:
        keys = stores.validate_gcs_keys(body.service_account_json)
        config = {"bucket": body.bucket, "prefix": body.prefix, "endpoint_url": body.endpoint_url}
    else:
        keys = stores.validate_keys(body.access_key_id, body.secret_access_key, body.session_token)
    if body.kind in stores.S3_KINDS:
        if not body.bucket:
            raise Invalid("An S3 store needs a bucket.", field="bucket")
        config = {
            "bucket": body.bucket,
            "prefix": body.prefix,
            "endpoint_url": body.endpoint_url,
            "region": body.region,
            "profile": body.profile,
        }
    """The organization's (`project_id` None) or a project's store set from `body`; the
    API and the console's data stores page both come here."""
    stores.configure(
        ctx,
        session,
        settings,
        kind=body.kind,
        config=config,
        verify=body.verify,
        keys=keys,
        project_id=project_id,
    )
    return _datastore_out(stores.describe(session, settings, ctx.org.id, project_id))


ProjectName = Annotated[str, Path(max_length=64)]


@router.get("/orgs/{org}/projects/{project}/datastore")
def show_project_datastore(
    project: ProjectName, caller: DatasetsRead, session: SessionDep, settings: SettingsDep
) -> DatastoreOut:
    """The project's default store for its jobs' outputs ("default": none, they go to the
    organization's store). Never a secret."""
    found = projects.get_project(session, caller.org, project, viewer=caller.ctx.viewer)
    return _datastore_out(stores.describe(session, settings, caller.org.id, found.id))


@router.put("/orgs/{org}/projects/{project}/datastore")
def configure_project_datastore(
    project: ProjectName,
    body: DatastoreIn,
    caller: StorageConfigure,
    session: SessionDep,
    settings: SettingsDep,
) -> DatastoreOut:
    """Name the project's default store (admins): the outputs of its jobs go there; the
    same settings and credentials as the organization's store. `kind: default` removes
    it (outputs go to the organization's store again)."""
    found = projects.get_project(session, caller.org, project, viewer=caller.ctx.viewer)
    return apply_datastore(body, caller.ctx, session, settings, found.id)


@router.get("/orgs/{org}/jobs/{id}/inputs")
def job_inputs(
    job_id: JobId, caller: JobInputsView, request: Request, session: SessionDep
) -> JobInputsOut:
    """The job's pinned inputs, with the job user's read access checked again now; for
    the agent materialising them (job token) or the job's owner."""
    job = job_in_org(session, caller, job_id)
    session.close()
    db: Database = request.app.state.db
    # A write transaction of its own: resolving records the inputs for lineage.
    with db.transaction() as tx:
        fresh = tx.get(Job, job.id)
        assert fresh is not None
        items = job_data.resolve_inputs(tx, fresh)
    return JobInputsOut(job_id=job.id, items=[JobInputOut(**i) for i in items])
