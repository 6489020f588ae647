"""An organization's storage quota (`storage.max_bytes` in its settings).

Usage is what the organization's live dataset versions and code bundles hold, each
counted at its size (identical bytes shared by two versions count twice: it is what
members see listed).
The quota is checked before any byte of an upload is stored: against the announced
`Content-Length` when there is one, and while streaming otherwise (`QuotaReader` stops
the upload at the limit, so the store's temp file is removed and nothing is committed).

Two uploads running at once are each checked against the usage when they started, so
together they may pass the limit by up to one upload.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from datasets.models import CodeBundle, Dataset, DatasetVersion
from datasets.wire import Reader
from orgs.models import Organization
from orgs.settings_doc import load as load_settings
from policies.errors import TooLarge

CODE = "storage_quota_exceeded"


def used_bytes(session: Session, org_id: uuid.UUID) -> int:
    """Bytes of the organization's live versions (tombstones hold no bytes) and of its
    code bundles."""
    total = session.scalar(
        select(func.coalesce(func.sum(DatasetVersion.size), 0))
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(Dataset.org_id == org_id, DatasetVersion.tombstoned_at.is_(None))
    )
    bundles = session.scalar(
        select(func.coalesce(func.sum(CodeBundle.size), 0)).where(CodeBundle.org_id == org_id)
    )
    return int(total or 0) + int(bundles or 0)


def owned_bytes(session: Session, org_id: uuid.UUID, user_id: uuid.UUID) -> int:
    """Bytes of the live versions of the datasets `user_id` created in the organization."""
    total = session.scalar(
        select(func.coalesce(func.sum(DatasetVersion.size), 0))
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(
            Dataset.org_id == org_id,
            Dataset.created_by == user_id,
            DatasetVersion.tombstoned_at.is_(None),
        )
    )
    return int(total or 0)


@dataclass(frozen=True, slots=True)
class StorageUse:
    """What an organization stores now, and what was added in a window."""

    datasets_bytes: int
    bundles_bytes: int
    datasets_added_bytes: int
    bundles_added_bytes: int

    @property
    def used_bytes(self) -> int:
        return self.datasets_bytes + self.bundles_bytes


def added_bytes(
    session: Session, org_id: uuid.UUID, since: datetime, until: datetime
) -> tuple[int, int]:
    """Bytes of dataset versions and of code bundles created in [since, until), whether
    or not they were deleted since (what the window added, not what is left of it)."""
    versions = session.scalar(
        select(func.coalesce(func.sum(DatasetVersion.size), 0))
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(
            Dataset.org_id == org_id,
            DatasetVersion.created_at >= since,
            DatasetVersion.created_at < until,
        )
    )
    bundles = session.scalar(
        select(func.coalesce(func.sum(CodeBundle.size), 0)).where(
            CodeBundle.org_id == org_id,
            CodeBundle.created_at >= since,
            CodeBundle.created_at < until,
        )
    )
    return int(versions or 0), int(bundles or 0)


def storage_use(
    session: Session, org_id: uuid.UUID, since: datetime, until: datetime
) -> StorageUse:
    datasets_now = session.scalar(
        select(func.coalesce(func.sum(DatasetVersion.size), 0))
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(Dataset.org_id == org_id, DatasetVersion.tombstoned_at.is_(None))
    )
    bundles_now = session.scalar(
        select(func.coalesce(func.sum(CodeBundle.size), 0)).where(CodeBundle.org_id == org_id)
    )
    versions_added, bundles_added = added_bytes(session, org_id, since, until)
    return StorageUse(int(datasets_now or 0), int(bundles_now or 0), versions_added, bundles_added)


@dataclass(frozen=True, slots=True)
class Quota:
    used: int
    limit: int | None  # None: unlimited

    def check(self, incoming: int, *, exact: bool = True) -> None:
        """TooLarge if `incoming` more bytes would pass the limit."""
        if self.limit is None or self.used + incoming <= self.limit:
            return
        needs = f"{incoming}" if exact else f"at least {incoming}"
        raise TooLarge(
            f"The organization's storage quota is exceeded: used {self.used} of "
            f"{self.limit} bytes, and this upload needs {needs} more. Delete versions "
            "or ask an admin to raise storage.max_bytes.",
            used=self.used,
            limit=self.limit,
            code=CODE,
        )


def quota_of(session: Session, org: Organization) -> Quota:
    limit = load_settings(org.settings).storage.max_bytes
    return Quota(used_bytes(session, org.id), limit)


class QuotaReader:
    """Counts what passes through and raises TooLarge as soon as `quota` would be
    passed: before the byte that would pass it is handed to the store."""

    def __init__(self, inner: Reader, quota: Quota) -> None:
        self._inner = inner
        self._quota = quota
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._inner.read(size)
        if data:
            self.size += len(data)
            self._quota.check(self.size, exact=False)
        return data
