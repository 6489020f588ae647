"""Code bundles on the server: upload once per digest, ownership per organization, read
back for a job.

The bytes go to the organization's current data store through the content-addressed
`Storage` (the object's name is the bundle's SHA-256), exactly like dataset bytes; a
`code_bundles` row records that this org uploaded them. Everything is looked up through
that row, so an org can never read another org's bundle, even one with the same digest
(it gets 404, as for anything it does not own). Bundles count against the org's
storage quota (`datasets.quota`).

Upload in three steps, like a dataset version: `plan_upload` (checks, in a
transaction), `receive` (streams into the store, no database), `commit` (the row).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from datasets import bundle_format, quota, stores, wire
from datasets.models import CodeBundle
from datasets.storage import ChecksumMismatch
from orgs import audit
from orgs.config import Settings
from orgs.context import OrgContext
from orgs.models import Organization, User
from policies.errors import Invalid, NotFound, TooLarge
from policies.permissions import Permission

__all__ = [
    "BundleUpload",
    "code_of",
    "commit",
    "find",
    "get",
    "open_bundle",
    "parse_digest",
    "plan_upload",
    "receive",
    "require",
]


def parse_digest(digest: str) -> str:
    """`sha256:<hex>` (a bare 64-hex digest is accepted and prefixed); 422 otherwise."""
    value = digest.strip().lower()
    if not value.startswith(bundle_format.DIGEST_PREFIX):
        value = bundle_format.DIGEST_PREFIX + value
    if not bundle_format.is_digest(value):
        raise Invalid(
            f"'{digest[:80]}' is not a bundle digest: 'sha256:' and 64 hexadecimal characters.",
            field="digest",
        )
    return value


def find(session: Session, org_id: uuid.UUID, digest: str) -> CodeBundle | None:
    return session.scalars(
        select(CodeBundle).where(CodeBundle.org_id == org_id, CodeBundle.digest == digest)
    ).first()


def get(ctx: OrgContext, session: Session, digest: str) -> CodeBundle:
    """The org's bundle (members who may view deployments); 404 when it has none."""
    ctx.require(Permission.deployments_view)
    bundle = find(session, ctx.org.id, parse_digest(digest))
    if bundle is None:
        raise NotFound(f"No code bundle {digest[:80]} in this organization.", code="not_found")
    return bundle


def require(session: Session, org: Organization, code: dict[str, Any]) -> dict[str, Any]:
    """A deployment's `code` checked: a bundle this org uploaded. Returns it normalised
    with the stored size and file count. 422 naming the digest otherwise."""
    if code.get("kind") != "bundle":
        raise Invalid(f"Unknown code kind {str(code.get('kind'))[:40]!r}.", field="code.kind")
    digest = parse_digest(str(code.get("digest") or ""))
    bundle = find(session, org.id, digest)
    if bundle is None:
        raise Invalid(
            f"The code bundle {digest} was not uploaded to this organization; upload it "
            f"first (PUT /orgs/{org.slug}/bundles/{digest}, which `cshare deploy` does).",
            field="code.digest",
            code="bundle_missing",
        )
    return code_of(bundle)


def code_of(bundle: CodeBundle) -> dict[str, Any]:
    return {"kind": "bundle", "digest": bundle.digest, "size": bundle.size, "files": bundle.files}


# ----------------------------------------------------------------------- upload


@dataclass(frozen=True)
class BundleUpload:
    org_id: uuid.UUID
    digest: str
    files: int
    actor: User
    store: stores.StoreRef
    org_quota: quota.Quota
    max_bytes: int


class _CappedReader:
    """Stops a body at `limit` bytes (TooLarge), before the byte past it is stored."""

    def __init__(self, inner: wire.Reader, limit: int) -> None:
        self._inner = inner
        self._limit = limit
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._inner.read(size)
        self.size += len(data)
        if self.size > self._limit:
            raise _too_large(self._limit)
        return data


def _too_large(limit: int) -> TooLarge:
    return TooLarge(
        f"Code bundles may be at most {limit} bytes (CSHARE_BUNDLE_MAX_BYTES); leave large "
        "files out with .gitignore or .cshareignore, or put data in a dataset.",
        limit=limit,
        code="bundle_too_large",
    )


def plan_upload(
    ctx: OrgContext,
    session: Session,
    settings: Settings,
    digest: str,
    *,
    files: int = 0,
    content_length: int | None = None,
) -> BundleUpload:
    ctx.require(Permission.deployments_register)
    digest = parse_digest(digest)
    if not 0 <= files <= bundle_format.MAX_FILES:
        raise Invalid(f"files must be 0-{bundle_format.MAX_FILES}.", field="files")
    if content_length is not None and content_length > settings.bundle_max_bytes:
        raise _too_large(settings.bundle_max_bytes)
    org_quota = quota.quota_of(session, ctx.org)
    if content_length is not None and find(session, ctx.org.id, digest) is None:
        org_quota.check(content_length)
    return BundleUpload(
        org_id=ctx.org.id,
        digest=digest,
        files=files,
        actor=ctx.user,
        store=stores.current_store(session, settings, ctx.org.id),
        org_quota=org_quota,
        max_bytes=settings.bundle_max_bytes,
    )


def receive(plan: BundleUpload, reader: wire.Reader) -> int:
    """Stream the body into the store, refusing it unless its SHA-256 is the digest
    (422 `checksum_mismatch`: nothing is stored). No database access. Returns its size."""
    capped = _CappedReader(reader, plan.max_bytes)
    source: wire.Reader = capped
    if plan.org_quota.limit is not None:
        source = quota.QuotaReader(capped, plan.org_quota)
    try:
        put = plan.store.backend.put_stream(
            source, expected_sha256=bundle_format.digest_hex(plan.digest)
        )
    except ChecksumMismatch:
        raise ChecksumMismatch(
            f"The body's SHA-256 is not {plan.digest}: nothing was stored.",
            field="digest",
        ) from None
    return put.size


def commit(
    session: Session, plan: BundleUpload, size: int, *, org: Organization
) -> tuple[CodeBundle, bool]:
    """The org's row for the uploaded bundle (created, or the existing one)."""
    existing = find(session, plan.org_id, plan.digest)
    if existing is not None:
        session.commit()
        return existing, False
    bundle = CodeBundle(
        org_id=plan.org_id,
        digest=plan.digest,
        size=size,
        files=plan.files,
        store_id=plan.store.store_id,
        created_by=plan.actor.id,
    )
    try:
        with session.begin_nested():
            session.add(bundle)
    except IntegrityError:  # the same bundle uploaded in parallel: theirs won
        session.rollback()
        again = find(session, plan.org_id, plan.digest)
        assert again is not None
        return again, False
    audit.record(
        session,
        org_id=plan.org_id,
        actor=plan.actor,
        action="bundle.uploaded",
        target_type="code_bundle",
        target_id=bundle.id,
        after={"digest": plan.digest, "size": size, "files": plan.files, "org": org.slug},
    )
    session.commit()
    return bundle, True


# ------------------------------------------------------------------------- read


def open_bundle(
    session: Session, settings: Settings, org_id: uuid.UUID, code: dict[str, Any] | None
) -> tuple[CodeBundle, Iterator[bytes]]:
    """The bytes of a job's bundle (`jobs.code`), from this org's row only."""
    if not code or code.get("kind") != "bundle":
        raise NotFound("This job has no code bundle.", code="no_code_bundle")
    digest = parse_digest(str(code.get("digest") or ""))
    bundle = find(session, org_id, digest)
    if bundle is None:
        raise NotFound(f"The code bundle {digest} is gone from this organization.")
    backend = stores.backend_for(session, settings, bundle.store_id)
    return bundle, backend.open(bundle_format.digest_hex(digest))
