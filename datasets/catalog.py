"""The dataset catalog: datasets, versions, uploads, downloads, access, deletion, and the
inputs of jobs.

Bytes and rows are kept apart on purpose. An upload is three steps, and only the last
touches the database for writing:

1. `plan_upload` (a short read): who may write where; the request's session is then
   closed, so no lock is held while bytes move (SQLite write transactions lock the
   whole database);
2. `receive`: the bytes stream into the store (hashed, committed under their hash);
3. `commit_upload` (a short write): the version row, only after every byte is stored
   and every checksum matched. An upload interrupted before that leaves no version.

Blobs are shared by content, so "delete the bytes when nothing refers to them" is a
decision under a row lock on the blob: `commit_upload` and `purge_unreferenced` both
take it, so a blob cannot be purged between an upload finding it already stored and the
new version referring to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from datasets import access, bundle_format, quota, stores, wire
from datasets.access import (
    Caller,
    JobScope,
    can_read,
    dataset_not_found,
    readable_clause,
    require_write,
)
from datasets.models import (
    KIND_FILE,
    VISIBILITIES,
    VISIBILITY_ORG,
    Blob,
    CodeBundle,
    Dataset,
    DatasetAccess,
    DatasetTeamAccess,
    DatasetVersion,
    JobInput,
    VersionFile,
)
from datasets.names import parse_ref, validate_filename, validate_name
from datasets.storage import ChecksumMismatch, ObjectMissing, Storage, StorageError
from orgs import audit, teams
from orgs.config import Settings
from orgs.context import OrgContext
from orgs.db import utcnow
from orgs.models import Membership, Organization, Team, User
from policies.errors import Conflict, Invalid, NotFound, Unavailable
from policies.names import refuse_bidi

log = logging.getLogger("cshare.datasets")

MAX_DESCRIPTION = 2000
MAX_INPUTS = 64
MAX_MEMBERS = 1000
USED_BY_SHOWN = 50


class CorruptObject(Exception):
    """Stored bytes do not match their checksum. Raised while streaming them out, after
    the answer has started: never an API error body, always an aborted transfer."""


def _description(text: str | None) -> str:
    text = text or ""
    if len(text) > MAX_DESCRIPTION:
        raise Invalid(
            f"Descriptions may have at most {MAX_DESCRIPTION} characters.", field="description"
        )
    return text


def _visibility(value: str) -> str:
    if value not in VISIBILITIES:
        raise Invalid("visibility is 'org' or 'restricted'.", field="visibility")
    return value


# ---------------------------------------------------------------------- finding things


def find_dataset(session: Session, ctx: OrgContext, name: str) -> Dataset:
    """The live dataset `name` if the caller may read it; 404 otherwise (also for names
    that are not valid names: they cannot exist)."""
    dataset = _live_dataset(session, ctx, name)
    if not can_read(session, ctx, dataset):
        raise dataset_not_found(name)
    return dataset


def _live_dataset(session: Session, ctx: OrgContext, name: str) -> Dataset:
    try:
        validate_name(name)
    except Invalid:
        raise dataset_not_found(name[:200]) from None
    dataset = session.scalars(
        select(Dataset).where(
            Dataset.org_id == ctx.org.id, Dataset.name == name, Dataset.deleted_at.is_(None)
        )
    ).first()
    if dataset is None:
        raise dataset_not_found(name)
    return dataset


def _latest(session: Session, dataset_id: uuid.UUID) -> DatasetVersion | None:
    return session.scalars(
        select(DatasetVersion)
        .where(DatasetVersion.dataset_id == dataset_id, DatasetVersion.tombstoned_at.is_(None))
        .order_by(DatasetVersion.version.desc())
        .limit(1)
    ).first()


def _job_output(
    session: Session, dataset_id: uuid.UUID, job_id: uuid.UUID
) -> DatasetVersion | None:
    """The version of this dataset the job already produced, if any (one at most)."""
    return session.scalars(
        select(DatasetVersion)
        .where(DatasetVersion.dataset_id == dataset_id, DatasetVersion.produced_by_job_id == job_id)
        .limit(1)
    ).first()


def _output_written(name: str) -> Conflict:
    return Conflict(
        f"This job already wrote its output '{name}'; a job writes each output once "
        "(lineage is write-once).",
        code="output_written",
    )


def find_version(session: Session, dataset: Dataset, version: int | None) -> DatasetVersion:
    """Version `version` (None = the latest live one); tombstones are found too."""
    if version is None:
        found = _latest(session, dataset.id)
        if found is None:
            raise NotFound(f"Dataset '{dataset.name}' has no versions yet.", code="no_versions")
        return found
    row = session.scalars(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset.id, DatasetVersion.version == version
        )
    ).first()
    if row is None:
        raise NotFound(
            f"Dataset '{dataset.name}' has no version {version}.", code="version_not_found"
        )
    return row


def parse_version(text: str) -> int | None:
    """A version path segment: a number, or `latest` (None)."""
    if text == "latest":
        return None
    if text.isascii() and text.isdecimal() and 1 <= int(text) <= 2**31 - 1:
        return int(text)
    raise NotFound(f"No version '{text[:40]}'.", code="version_not_found")


# ---------------------------------------------------------------------- create / access


def _member_ids(session: Session, org_id: uuid.UUID, members: Sequence[str]) -> list[uuid.UUID]:
    """User ids from ids or user names; every one must be a member of the org (422)."""
    if len(members) > MAX_MEMBERS:
        raise Invalid(f"At most {MAX_MEMBERS} members per dataset.", field="members")
    ids: list[uuid.UUID] = []
    for raw in members:
        try:
            key: Any = uuid.UUID(raw)
            cond = Membership.user_id == key
        except (ValueError, AttributeError, TypeError):
            cond = User.name == raw
        found = session.scalars(
            select(Membership.user_id)
            .join(User, User.id == Membership.user_id)
            .where(Membership.org_id == org_id, cond)
        ).first()
        if found is None:
            raise Invalid(
                f"'{str(raw)[:100]}' is not a member of this organization.", field="members"
            )
        if found not in ids:
            ids.append(found)
    return ids


def create_dataset(
    ctx: OrgContext,
    session: Session,
    *,
    name: str,
    description: str | None = None,
    visibility: str = VISIBILITY_ORG,
    members: Sequence[str] = (),
) -> Dataset:
    """A new, empty dataset owned by the caller; commits. 409 if the name is taken."""
    validate_name(name)
    dataset = Dataset(
        id=uuid.uuid4(),
        org_id=ctx.org.id,
        name=name,
        description=_description(description),
        visibility=_visibility(visibility),
        created_by=ctx.user.id,
    )
    member_ids = _member_ids(session, ctx.org.id, members)
    session.add(dataset)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"A dataset named '{name}' already exists.", code="dataset_exists") from None
    for user_id in member_ids:
        session.add(DatasetAccess(dataset_id=dataset.id, user_id=user_id))
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="dataset.created",
        target_type="dataset",
        target_id=dataset.id,
        after={
            "name": name,
            "visibility": dataset.visibility,
            "members": [str(m) for m in member_ids],
        },
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"A dataset named '{name}' already exists.", code="dataset_exists") from None
    return dataset


def access_members(session: Session, dataset_id: uuid.UUID) -> list[User]:
    return list(
        session.scalars(
            select(User)
            .join(DatasetAccess, DatasetAccess.user_id == User.id)
            .where(DatasetAccess.dataset_id == dataset_id)
            .order_by(User.name)
        )
    )


def access_teams(session: Session, dataset_id: uuid.UUID) -> list[str]:
    return list(
        session.scalars(
            select(Team.name)
            .join(DatasetTeamAccess, DatasetTeamAccess.team_id == Team.id)
            .where(DatasetTeamAccess.dataset_id == dataset_id)
            .order_by(Team.name)
        )
    )


def set_access(
    ctx: OrgContext,
    session: Session,
    dataset: Dataset,
    *,
    visibility: str | None,
    members: Sequence[str] | None,
    team_names: Sequence[str] | None = None,
) -> Dataset:
    """Change visibility and/or the member or team list (each replaced as a whole);
    commits. Members of a listed team read a restricted dataset like listed members."""
    require_write(ctx, dataset)
    before = {
        "visibility": dataset.visibility,
        "members": [str(u.id) for u in access_members(session, dataset.id)],
        "teams": access_teams(session, dataset.id),
    }
    if visibility is not None:
        dataset.visibility = _visibility(visibility)
    if members is not None:
        ids = _member_ids(session, ctx.org.id, members)
        session.execute(delete(DatasetAccess).where(DatasetAccess.dataset_id == dataset.id))
        for user_id in ids:
            session.add(DatasetAccess(dataset_id=dataset.id, user_id=user_id))
    if team_names is not None:
        found = teams.teams_by_name(session, ctx.org, team_names)
        session.execute(delete(DatasetTeamAccess).where(DatasetTeamAccess.dataset_id == dataset.id))
        for team in found:
            session.add(DatasetTeamAccess(dataset_id=dataset.id, team_id=team.id))
    session.flush()
    after = {
        "visibility": dataset.visibility,
        "members": [str(u.id) for u in access_members(session, dataset.id)],
        "teams": access_teams(session, dataset.id),
    }
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="dataset.access_changed",
        target_type="dataset",
        target_id=dataset.id,
        before={"name": dataset.name, **before},
        after={"name": dataset.name, **after},
    )
    session.commit()
    return dataset


# ---------------------------------------------------------------------- reading


@dataclass(frozen=True)
class DatasetSummary:
    dataset: Dataset
    creator: User | None
    version_count: int
    total_size: int
    latest: DatasetVersion | None


def list_datasets(
    session: Session, ctx: OrgContext, *, limit: int, offset: int
) -> tuple[list[DatasetSummary], int]:
    """The datasets the caller may read, by name, with size and latest version."""
    where = and_(readable_clause(ctx), Dataset.deleted_at.is_(None))
    total = int(session.scalar(select(func.count()).select_from(Dataset).where(where)) or 0)
    rows = list(
        session.execute(
            select(Dataset, User)
            .outerjoin(User, User.id == Dataset.created_by)
            .where(where)
            .order_by(Dataset.name)
            .limit(limit)
            .offset(offset)
        ).all()
    )
    ids = [d.id for d, _ in rows]
    found: dict[uuid.UUID, tuple[DatasetVersion, int, int]] = {}
    if ids:
        # One query: per dataset, the live versions' count and size, joined to the top one.
        live = and_(DatasetVersion.dataset_id.in_(ids), DatasetVersion.tombstoned_at.is_(None))
        top = (
            select(
                DatasetVersion.dataset_id.label("dataset_id"),
                func.max(DatasetVersion.version).label("top"),
                func.count().label("count"),
                func.coalesce(func.sum(DatasetVersion.size), 0).label("total"),
            )
            .where(live)
            .group_by(DatasetVersion.dataset_id)
            .subquery()
        )
        for version, n_versions, size in session.execute(
            select(DatasetVersion, top.c.count, top.c.total).join(
                top,
                and_(
                    DatasetVersion.dataset_id == top.c.dataset_id,
                    DatasetVersion.version == top.c.top,
                ),
            )
        ):
            found[version.dataset_id] = (version, int(n_versions), int(size))
    summaries = []
    for d, u in rows:
        latest, n_versions, size = found.get(d.id, (None, 0, 0))
        summaries.append(DatasetSummary(d, u, n_versions, size, latest))
    return summaries, total


@dataclass(frozen=True)
class VersionInfo:
    version: DatasetVersion
    creator: User | None
    used_by: list[uuid.UUID]
    used_by_count: int


@dataclass(frozen=True)
class DatasetDetail:
    dataset: Dataset
    creator: User | None
    members: list[User]
    versions: list[VersionInfo]
    can_write: bool


def _users(session: Session, ids: Iterable[uuid.UUID | None]) -> dict[uuid.UUID, User]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    return {u.id: u for u in session.scalars(select(User).where(User.id.in_(wanted)))}


# Which jobs read each version, oldest first: `flows.lineage.jobs_using` (flows sits above
# the catalog, so its callers pass it in).
JobsUsing = Callable[[Session, Sequence[uuid.UUID]], Mapping[uuid.UUID, list[uuid.UUID]]]


def dataset_detail(
    session: Session,
    ctx: OrgContext,
    dataset: Dataset,
    *,
    jobs_using: JobsUsing,
    limit: int = 1000,
) -> DatasetDetail:
    versions = list(
        session.scalars(
            select(DatasetVersion)
            .where(DatasetVersion.dataset_id == dataset.id)
            .order_by(DatasetVersion.version.desc())
            .limit(limit)
        )
    )
    users = _users(session, [dataset.created_by, *(v.created_by for v in versions)])
    used = jobs_using(session, [v.id for v in versions])
    infos = [
        VersionInfo(
            version=v,
            creator=users.get(v.created_by) if v.created_by else None,
            used_by=used.get(v.id, [])[:USED_BY_SHOWN],
            used_by_count=len(used.get(v.id, [])),
        )
        for v in versions
    ]
    return DatasetDetail(
        dataset=dataset,
        creator=users.get(dataset.created_by) if dataset.created_by else None,
        members=access_members(session, dataset.id),
        versions=infos,
        can_write=access.can_write(ctx, dataset),
    )


def version_files(session: Session, version_id: uuid.UUID) -> list[tuple[VersionFile, Blob]]:
    return [
        (f, b)
        for f, b in session.execute(
            select(VersionFile, Blob)
            .join(Blob, Blob.id == VersionFile.blob_id)
            .where(VersionFile.version_id == version_id)
            .order_by(VersionFile.seq)
        )
    ]


# ---------------------------------------------------------------------- upload


@dataclass(frozen=True)
class UploadPlan:
    org_id: uuid.UUID
    dataset_id: uuid.UUID
    dataset_name: str
    store: stores.StoreRef
    actor: User
    job_id: uuid.UUID | None
    kind: str
    filename: str
    description: str
    expected_sha256: str | None
    org_quota: quota.Quota
    archive_max_files: int = wire.MAX_ARCHIVE_FILES
    archive_max_bytes: int = wire.MAX_ARCHIVE_BYTES


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Received:
    sha256: str  # the version's checksum (file hash, or manifest hash)
    size: int
    files: list[ReceivedFile] = field(default_factory=list)


def plan_upload(
    session: Session,
    settings: Settings,
    caller: Caller,
    name: str,
    *,
    kind: str,
    filename: str | None,
    description: str | None,
    producer: JobScope | None,
    expected_sha256: str | None,
    content_length: int | None = None,
) -> UploadPlan:
    """Everything an upload needs decided before any byte is read (no writes). A file
    whose announced `content_length` would pass the org's storage quota is refused
    here (TooLarge), before its first byte is read.

    `producer`: the job this is an output of, as `flows.job_data.output_job` checked it
    (the job token's own job). A job writes each output once: a second version of the
    same dataset from the same job is refused (409 `output_written`)."""
    dataset = find_dataset(session, caller.ctx, name)
    require_write(caller.ctx, dataset)
    access.require_output(caller, dataset.name)
    if expected_sha256 is not None:
        expected_sha256 = expected_sha256.strip().lower()
        if not wire.is_sha256(expected_sha256):
            raise Invalid(
                "X-Content-SHA256 is 64 hexadecimal characters.", field="X-Content-SHA256"
            )
    if producer is not None:
        # Refused before any byte moves when the announced checksum shows it is not a
        # retry of the same output; `commit_upload` decides for certain, under the
        # dataset's lock.
        earlier = _job_output(session, dataset.id, producer.id)
        if earlier is not None and expected_sha256 not in (None, earlier.sha256):
            raise _output_written(dataset.name)
    filename = validate_filename(filename or name)
    org_quota = quota.quota_of(session, caller.org)
    if content_length is not None and kind == KIND_FILE:
        # A tar's length is an upper bound of its files: checked per file instead.
        org_quota.check(content_length)
    return UploadPlan(
        org_id=caller.org.id,
        dataset_id=dataset.id,
        dataset_name=dataset.name,
        store=stores.current_store(
            session, settings, caller.org.id, producer.project_id if producer else None
        ),
        actor=caller.user,
        job_id=producer.id if producer else None,
        kind=kind,
        filename=filename,
        description=_description(description),
        expected_sha256=expected_sha256,
        org_quota=org_quota,
        archive_max_files=settings.archive_max_files,
        archive_max_bytes=settings.archive_max_bytes,
    )


def receive(plan: UploadPlan, reader: wire.Reader) -> Received:
    """Stream the body into the store. No database access: runs with no session open.
    Any failure (quota, checksum, unsafe archive, a client going away) leaves no temp
    file: each backend's `put_stream` removes or aborts what it started."""
    backend = plan.store.backend
    if plan.kind == KIND_FILE:
        if plan.org_quota.limit is not None:
            reader = quota.QuotaReader(reader, plan.org_quota)
        put = backend.put_stream(reader, expected_sha256=plan.expected_sha256)
        return Received(put.sha256, put.size, [ReceivedFile(plan.filename, put.sha256, put.size)])
    body = wire.HashingReader(reader)
    files: list[ReceivedFile] = []
    total = 0
    members = wire.iter_tar_members(
        body,
        max_files=plan.archive_max_files,
        max_bytes=plan.archive_max_bytes,
        check_name=lambda name: refuse_bidi(name, field="body"),
    )
    try:
        for path, size, member in members:
            # The tar header announces each file's size: refused before it is stored.
            plan.org_quota.check(total + size)
            put = backend.put_stream(member)
            total += put.size
            files.append(ReceivedFile(path, put.sha256, put.size))
    except wire.UnsafeArchive as exc:
        raise Invalid(f"The directory upload was refused: {exc}.", field="body") from None
    body.drain()  # tar's trailing blocks: the body is consumed whole, the client answered
    manifest = [wire.ManifestEntry(f.path, f.sha256, f.size) for f in files]
    sha = wire.manifest_sha256(manifest)
    if plan.expected_sha256 is not None and plan.expected_sha256 != sha:
        raise ChecksumMismatch(
            f"The directory's manifest SHA-256 is {sha}, not the announced {plan.expected_sha256}.",
            field="X-Content-SHA256",
        )
    return Received(sha, sum(f.size for f in files), sorted(files, key=lambda f: f.path))


def _claim_blob(session: Session, store: stores.StoreRef, sha256: str, size: int) -> Blob:
    """The blob row for (store, sha256), locked; created if new. Fails if the bytes were
    purged after `receive` found them (the lock makes that check final)."""
    same_store = (
        Blob.store_id.is_(None) if store.store_id is None else Blob.store_id == store.store_id
    )
    stmt = select(Blob).where(same_store, Blob.sha256 == sha256).with_for_update()
    blob = session.scalars(stmt).first()
    if blob is None:
        try:
            with session.begin_nested():
                blob = Blob(store_id=store.store_id, sha256=sha256, size=size)
                session.add(blob)
        except IntegrityError:  # a parallel upload of the same bytes inserted it first
            blob = session.scalars(stmt).one()
    if blob.purged_at is not None:
        # Blob rows are never deleted, so a row that is absent or not purged means the
        # bytes are there; only a purged row needs the (network) check.
        if not store.backend.exists(sha256):
            raise Conflict(
                "The stored bytes were removed by a concurrent delete while this upload "
                "finished; upload again.",
                code="upload_raced_delete",
            )
        blob.purged_at = None
    return blob


def commit_upload(
    session: Session, plan: UploadPlan, received: Received
) -> tuple[DatasetVersion, bool]:
    """The version row for stored bytes; commits. Returns (version, created).

    Re-uploading exactly the latest version's content (same checksum, kind, file name and
    producing job) returns that version instead of adding a copy, so a retried upload
    whose answer was lost is harmless. Any other second output of the same job to the
    same dataset is refused (409 `output_written`).
    """
    dataset = session.scalars(
        select(Dataset).where(Dataset.id == plan.dataset_id).with_for_update()
    ).first()
    if dataset is None or dataset.deleted_at is not None:
        raise NotFound(
            f"Dataset '{plan.dataset_name}' was deleted during the upload.",
            code="dataset_not_found",
        )
    latest = _latest(session, dataset.id)
    if (
        latest is not None
        and latest.sha256 == received.sha256
        and latest.kind == plan.kind
        and latest.filename == plan.filename
        and latest.produced_by_job_id == plan.job_id
    ):
        session.commit()
        return latest, False
    if plan.job_id is not None and _job_output(session, dataset.id, plan.job_id) is not None:
        raise _output_written(dataset.name)  # lineage is write-once
    # Locked in checksum order, as `_purge_batch` does: no two transactions can wait on
    # each other's blobs (a deadlock on PostgreSQL).
    sizes = {f.sha256: f.size for f in received.files}
    blobs = {sha: _claim_blob(session, plan.store, sha, sizes[sha]) for sha in sorted(sizes)}
    top = session.scalar(
        select(func.max(DatasetVersion.version)).where(DatasetVersion.dataset_id == dataset.id)
    )
    version = DatasetVersion(
        id=uuid.uuid4(),
        dataset_id=dataset.id,
        version=(top or 0) + 1,
        kind=plan.kind,
        filename=plan.filename,
        sha256=received.sha256,
        size=received.size,
        file_count=len(received.files),
        description=plan.description,
        created_by=plan.actor.id,
        produced_by_job_id=plan.job_id,
    )
    session.add(version)
    session.flush()
    session.add_all(
        VersionFile(
            version_id=version.id, seq=i, path=f.path, blob_id=blobs[f.sha256].id, size=f.size
        )
        for i, f in enumerate(received.files)
    )
    audit.record(
        session,
        org_id=plan.org_id,
        actor=plan.actor,
        action="dataset.version_created",
        target_type="dataset",
        target_id=dataset.id,
        after={
            "name": dataset.name,
            "version": version.version,
            "sha256": version.sha256,
            "size": version.size,
            "kind": version.kind,
            "job_id": str(plan.job_id) if plan.job_id else None,
        },
    )
    session.commit()
    return version, True


# ---------------------------------------------------------------------- download


@dataclass(frozen=True)
class Download:
    dataset: str
    version: int
    kind: str
    filename: str
    sha256: str
    size: int
    content_length: int
    media_type: str
    created_at: datetime
    backend: Storage
    files: list[tuple[str, str, int]]  # (path, blob sha256, size)
    first: Iterator[bytes] | None = None  # a file's object, opened before the answer starts


def plan_download(
    session: Session, settings: Settings, caller: Caller, name: str, version: int | None
) -> Download:
    """What to stream for a version the caller may read. A job token may fetch only its
    job's pinned inputs (the user's access is checked again here, at fetch time)."""
    dataset = find_dataset(session, caller.ctx, name)
    row = find_version(session, dataset, version)
    if caller.job is not None:
        # Pinned at submission (job.inputs), or recorded since (job_inputs).
        pinned = {uuid.UUID(v) for v in caller.job.pinned}
        pinned.update(
            session.scalars(select(JobInput.version_id).where(JobInput.job_id == caller.job.id))
        )
        if not access.can_read_input_version(caller, row.id, frozenset(pinned)):
            raise dataset_not_found(name)
    if row.tombstoned_at is not None:
        raise NotFound(
            f"Version {row.version} of '{name}' was deleted; only its record is kept.",
            code="version_deleted",
        )
    files = version_files(session, row.id)
    store_id = files[0][1].store_id if files else None
    backend = stores.backend_for(session, settings, store_id)
    entries = [(f.path, b.sha256, f.size) for f, b in files]
    mtime = row.created_at.timestamp()
    plan = Download(
        dataset=dataset.name,
        version=row.version,
        kind=row.kind,
        filename=row.filename,
        sha256=row.sha256,
        size=row.size,
        content_length=row.size
        if row.kind == KIND_FILE
        else wire.tar_length([(p, s) for p, _, s in entries], mtime=mtime),
        media_type=wire.FILE_MEDIA_TYPE if row.kind == KIND_FILE else wire.TAR_MEDIA_TYPE,
        created_at=row.created_at,
        backend=backend,
        files=entries,
    )
    if row.kind == KIND_FILE and entries:
        try:
            return _with_first(plan, backend.open(entries[0][1]))
        except ObjectMissing:
            log.error(
                "dataset bytes missing: org=%s dataset=%s version=%s sha256=%s",
                caller.org.slug,
                name,
                row.version,
                row.sha256,
            )
            raise Unavailable(
                f"The bytes of '{name}' version {row.version} are missing from the store; "
                "an admin should check it.",
                code="data_missing",
            ) from None
    return plan


def _with_first(plan: Download, chunks: Iterator[bytes]) -> Download:
    return dataclasses.replace(plan, first=chunks)


def verified(chunks: Iterable[bytes], sha256: str, size: int, what: str) -> Iterator[bytes]:
    """Pass `chunks` on, holding the last one back until all bytes hashed right.

    On a mismatch the last chunk is never sent and `CorruptObject` is raised, so the
    response ends short of its Content-Length and the client sees a broken transfer
    rather than complete-looking bad data.
    """
    digest = hashlib.sha256()
    got = 0
    held: bytes | None = None
    for chunk in chunks:
        digest.update(chunk)
        got += len(chunk)
        if got > size:
            break
        if held is not None:
            yield held
        held = chunk
    actual = digest.hexdigest()
    if got != size or actual != sha256:
        log.error(
            "checksum mismatch while streaming %s: expected sha256=%s size=%d, read %s%d "
            "bytes hashing to %s; the transfer was aborted",
            what,
            sha256,
            size,
            "more than " if got > size else "",
            got,
            actual,
        )
        raise CorruptObject(f"Stored bytes of {what} do not match their checksum.")
    if held is not None:
        yield held


def stream(plan: Download) -> Iterator[bytes]:
    """The body of a download: the file's bytes, or a tar of the directory's files;
    every object verified against its checksum as it goes out."""
    label = f"{plan.dataset}@{plan.version}"
    if plan.kind == KIND_FILE:
        chunks = plan.first if plan.first is not None else iter(())
        yield from verified(chunks, plan.sha256, plan.size, label)
        return
    yield from wire.iter_tar(
        (
            (
                path,
                size,
                lambda sha=sha, size=size, path=path: verified(  # type: ignore[misc]
                    plan.backend.open(sha), sha, size, f"{label}:{path}"
                ),
            )
            for path, sha, size in plan.files
        ),
        mtime=plan.created_at.timestamp(),
    )


# ---------------------------------------------------------------------- delete


@dataclass(frozen=True)
class DeleteResult:
    deleted_versions: int
    tombstoned_versions: int
    purged_objects: int


def _versions_in_use(session: Session, version_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    if not version_ids:
        return set()
    used = set(
        session.scalars(select(JobInput.version_id).where(JobInput.version_id.in_(version_ids)))
    )
    used |= set(
        session.scalars(
            select(DatasetVersion.id).where(
                DatasetVersion.id.in_(version_ids), DatasetVersion.produced_by_job_id.is_not(None)
            )
        )
    )
    return used


def delete_dataset(
    session: Session, settings: Settings, ctx: OrgContext, dataset: Dataset
) -> DeleteResult:
    """Delete a dataset (creator or admin). Versions a job used or produced become
    tombstones: their record stays for lineage, their bytes go. Commits, then removes the
    bytes nothing live refers to any more."""
    require_write(ctx, dataset)
    versions = list(
        session.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id))
    )
    blob_ids = (
        set(
            session.scalars(
                select(VersionFile.blob_id).where(
                    VersionFile.version_id.in_([v.id for v in versions])
                )
            )
        )
        if versions
        else set()
    )
    used = _versions_in_use(session, [v.id for v in versions])
    now = utcnow()
    deleted = tombstoned = 0
    for v in versions:
        if v.id in used:
            if v.tombstoned_at is None:
                v.tombstoned_at = now
                tombstoned += 1
        else:
            session.delete(v)
            deleted += 1
    session.execute(delete(DatasetAccess).where(DatasetAccess.dataset_id == dataset.id))
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="dataset.deleted",
        target_type="dataset",
        target_id=dataset.id,
        before={
            "name": dataset.name,
            "visibility": dataset.visibility,
            "versions": len(versions),
        },
        after={"deleted_versions": deleted, "tombstoned_versions": tombstoned},
    )
    if used:
        dataset.deleted_at = now  # kept, name freed, for the tombstones' sake
    else:
        session.delete(dataset)
    session.commit()
    purged = purge_unreferenced(session, settings, blob_ids)
    return DeleteResult(deleted, tombstoned, purged)


def purge_unreferenced(session: Session, settings: Settings, blob_ids: Iterable[int]) -> int:
    """Remove the bytes of these blobs where no live version refers to them; commits.

    Each blob is decided under its row lock (see the module docstring), a few per
    transaction, and the rows are kept (marked purged) so a later upload of the same
    bytes knows to check the store. A store that fails is logged and skipped: the bytes
    stay, nothing refers to them, and a later purge can remove them.
    """
    purged = 0
    ids = sorted(blob_ids)
    for start in range(0, len(ids), 50):
        batch = ids[start : start + 50]
        try:
            purged += _purge_batch(session, settings, batch)
            session.commit()
        except StorageError as exc:
            session.rollback()
            log.warning("could not purge dataset objects %s: %s", batch, exc.detail)
    return purged


def _bundle_ref() -> ColumnElement[bool]:
    # A code bundle (datasets.code_bundles) with the same bytes keeps the object: both
    # live in the same content-addressed store under the same name.
    return exists().where(
        CodeBundle.digest == literal(bundle_format.DIGEST_PREFIX) + Blob.sha256,
        CodeBundle.store_id.is_not_distinct_from(Blob.store_id),
    )


def _purge_batch(session: Session, settings: Settings, blob_ids: list[int]) -> int:
    live_ref = exists().where(
        VersionFile.blob_id == Blob.id,
        DatasetVersion.id == VersionFile.version_id,
        DatasetVersion.tombstoned_at.is_(None),
    )
    blobs = session.scalars(
        select(Blob)
        .where(Blob.id.in_(blob_ids), Blob.purged_at.is_(None), ~live_ref, ~_bundle_ref())
        .order_by(Blob.sha256)
        .with_for_update()
    ).all()
    now = utcnow()
    for blob in blobs:
        # Deleted while the row lock is held: an upload reusing these bytes waits for
        # this transaction and then sees `purged_at`.
        stores.backend_for(session, settings, blob.store_id).delete(blob.sha256)
        blob.purged_at = now
    return len(blobs)


def collect_garbage(session: Session, settings: Settings) -> int:
    """Purge every blob no live version refers to (after failed purges, org deletions)."""
    live_ref = exists().where(
        VersionFile.blob_id == Blob.id,
        DatasetVersion.id == VersionFile.version_id,
        DatasetVersion.tombstoned_at.is_(None),
    )
    ids = list(
        session.scalars(select(Blob.id).where(Blob.purged_at.is_(None), ~live_ref, ~_bundle_ref()))
    )
    session.commit()
    return purge_unreferenced(session, settings, ids)


# ---------------------------------------------------------------------- job inputs


def parse_input(spec: Mapping[str, Any] | str) -> tuple[str, str, int | None]:
    """(name in the flow, dataset, version or None) from `"NAME[@V]"`,
    `"ALIAS=NAME[@V]"` or `{"dataset", "version"?, "name"?}`."""
    if isinstance(spec, str):
        alias, sep, ref = spec.partition("=")
        if not sep:
            alias, ref = "", spec
        dataset, version = parse_ref(ref.strip(), field="inputs")
        return (alias.strip() or dataset), dataset, version
    if not isinstance(spec, Mapping):
        raise Invalid("Each input is 'NAME[@VERSION]' or {dataset, version?}.", field="inputs")
    given = spec.get("dataset")
    if not isinstance(given, str):
        raise Invalid("Each input needs a 'dataset' name.", field="inputs")
    dataset, version = parse_ref(given, field="inputs")
    raw_version = spec.get("version")
    if raw_version not in (None, "", "latest"):
        if isinstance(raw_version, bool) or not isinstance(raw_version, int | str):
            raise Invalid("An input's version is a positive number.", field="inputs")
        _, version = parse_ref(f"{dataset}@{raw_version}", field="inputs")
    alias = spec.get("name") or dataset
    if not isinstance(alias, str):
        raise Invalid("An input's name is a dataset-like name.", field="inputs")
    return alias, dataset, version


def pin_inputs(
    session: Session,
    ctx: OrgContext,
    specs: Sequence[Mapping[str, Any] | str],
    unreadable: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Check and pin a submission's inputs: every version concrete (the latest when none
    is given). The result is what `Job.inputs` should hold. A dataset of the org that the
    submitter may not read is 404 (as if it did not exist), or, when `unreadable` is
    given, named there and left out, so that admission's `dataset_access` rule refuses
    the submission with its own reason.

    For the jobs service: call it while preparing a submission, store the result in
    `Job.inputs`, and call `flows.job_data.link_job_inputs` once the job row exists.
    """
    if len(specs) > MAX_INPUTS:
        raise Invalid(f"At most {MAX_INPUTS} inputs per job.", field="inputs")
    pinned: list[dict[str, Any]] = []
    seen: set[str] = set()
    for spec in specs:
        alias, name, number = parse_input(spec)
        validate_name(alias, field="inputs")
        if alias in seen:
            raise Invalid(f"Two inputs are named '{alias}'.", field="inputs")
        seen.add(alias)
        dataset = _live_dataset(session, ctx, name)
        if not can_read(session, ctx, dataset):
            if unreadable is None:
                raise dataset_not_found(name)
            unreadable.append(name)
            continue
        try:
            row = find_version(session, dataset, number)
        except NotFound as exc:
            raise Invalid(exc.detail, field="inputs") from None
        if row.tombstoned_at is not None:
            raise Invalid(
                f"Version {row.version} of '{name}' was deleted; pick another.", field="inputs"
            )
        pinned.append(pinned_entry(alias, dataset, row))
    return pinned


def pinned_entry(alias: str, dataset: Dataset, row: DatasetVersion) -> dict[str, Any]:
    return {
        "name": alias,
        "dataset": dataset.name,
        "dataset_id": str(dataset.id),
        "version": row.version,
        "version_id": str(row.id),
        "kind": row.kind,
        "filename": row.filename,
        "sha256": row.sha256,
        "size": row.size,
    }


# ---------------------------------------------------------------------- cascades
# Registered with orgs.cascade at start-up (flows.wiring).


def drop_access_of_removed_member(session: Session, org: Organization, user_id: uuid.UUID) -> None:
    """A member who leaves loses their place on restricted datasets' lists."""
    in_org = select(Dataset.id).where(Dataset.org_id == org.id)
    session.execute(
        delete(DatasetAccess).where(
            DatasetAccess.user_id == user_id, DatasetAccess.dataset_id.in_(in_org)
        )
    )


def drop_org_datasets(session: Session, org: Organization) -> None:
    """Datasets (and their versions, files, access and job links) go first, so that the
    org's own stores and their blob rows can then go without a file row pointing at
    them. Bytes in the default store are left for `collect_garbage`: nothing outside
    the database may change in this transaction."""
    session.execute(delete(Dataset).where(Dataset.org_id == org.id))
