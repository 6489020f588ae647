"""Tables of the dataset catalog and of lineage.

- `data_stores`: an organization's configured store (S3); none active = the default store.
- `dataset_blobs`: one stored object (content-addressed) per store and checksum. Versions
  reference blobs through `dataset_version_files`, so identical bytes are stored once and
  a blob's bytes can be removed exactly when no live version refers to them.
- `datasets`, `dataset_versions`, `dataset_access`: the catalog. A version is a file (one
  file row) or a directory (one row per file). A deleted dataset whose versions were used
  by jobs keeps those versions as tombstones (metadata, no bytes) for lineage.
- `job_inputs` (the pinned versions a job reads), `dataset_versions.produced_by_job_id`
  (a version has at most one producing job, so a column rather than a link table), and
  `job_lineage` (how and where a job ran, and what it logged). The jobs table itself is
  left alone.
- `job_tokens`: bearer tokens scoped to one job, handed to its flow on the machine.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from orgs.db import Base, UTCDateTime, utcnow
from orgs.models import BigId, JSONType, new_id

VISIBILITY_ORG = "org"
VISIBILITY_RESTRICTED = "restricted"
VISIBILITIES = (VISIBILITY_ORG, VISIBILITY_RESTRICTED)
KIND_FILE = "file"
KIND_DIRECTORY = "directory"


class DataStore(Base):
    """Where an organization's dataset bytes go, and the access key its admins gave for
    it (never returned by the API, never logged; `datasets.stores`)."""

    __tablename__ = "data_stores"
    __table_args__ = (Index("ix_data_stores_org_id_active", "org_id", "active"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    # Set: the project's default store, where its jobs' outputs go (migration 0031);
    # None: the organization's store for everything else. No foreign key on purpose:
    # deleting the project must not delete the row, whose blobs still hold the bytes of
    # the outputs it received (the row simply stops being anyone's default).
    project_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    # bucket, prefix, endpoint_url, region, profile (the name of an AWS profile)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # {"access_key_id", "secret_access_key", "session_token"?}; None = no key given
    credentials: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Blob(Base):
    """One object in one store. `store_id` NULL = the installation's default store."""

    __tablename__ = "dataset_blobs"
    __table_args__ = (
        Index(
            "uq_dataset_blobs_default_sha256",
            "sha256",
            unique=True,
            sqlite_where=text("store_id IS NULL"),
            postgresql_where=text("store_id IS NULL"),
        ),
        Index(
            "uq_dataset_blobs_store_sha256",
            "store_id",
            "sha256",
            unique=True,
            sqlite_where=text("store_id IS NOT NULL"),
            postgresql_where=text("store_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    store_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("data_stores.id", ondelete="CASCADE"), nullable=True
    )
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when the bytes were removed because no live version referred to them.
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        # Unique among live datasets only: a deleted name can be used again while the
        # tombstones of the old one stay for lineage.
        Index(
            "uq_datasets_org_id_name_live",
            "org_id",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    visibility: Mapped[str] = mapped_column(String(16), default=VISIBILITY_ORG)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # file | directory
    filename: Mapped[str] = mapped_column(String(255))
    # The file's SHA-256, or the directory manifest's (datasets.wire).
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)  # content bytes (all files)
    file_count: Mapped[int] = mapped_column(Integer, default=1)
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    produced_by_job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    tombstoned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class VersionFile(Base):
    """One file of a version (a file version has exactly one, named `filename`)."""

    __tablename__ = "dataset_version_files"

    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)  # manifest order (by path)
    # Text, and not indexed: paths go up to 4096 bytes, beyond a btree entry's limit.
    path: Mapped[str] = mapped_column(Text)
    blob_id: Mapped[int] = mapped_column(ForeignKey("dataset_blobs.id"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class DatasetAccess(Base):
    """Members who may read a restricted dataset (admins and the creator always may)."""

    __tablename__ = "dataset_access"

    dataset_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class JobInput(Base):
    """A dataset version a job reads, pinned at submission, under the name the flow uses."""

    __tablename__ = "job_inputs"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    name: Mapped[str] = mapped_column(String(128))


class JobLineage(Base):
    """How and where a job ran, beyond the job row: code, image, machine, resources, and
    what the flow logged with `flows.runtime.log_metadata`. Written by the agent and the
    runtime, piece by piece, so every column is optional."""

    __tablename__ = "job_lineage"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    # {"git_commit", "git_dirty", "bundle_sha256", "source"}
    code: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    image: Mapped[str | None] = mapped_column(String(512), nullable=True)
    machine: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    parameters: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    resources_requested: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    resources_used: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    job_metadata: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class JobToken(Base):
    """A bearer token that acts for one job only (its inputs, outputs and metadata).
    Only the SHA-256 of the secret is stored."""

    __tablename__ = "job_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CodeBundle(Base):
    """A code bundle an organization uploaded (`cshare deploy`): its bytes are one object
    of the org's store at the time (`store_id`; NULL = the default store), named by the
    digest. The row is what lets this org, and only this org, read it: another org
    uploading the same bytes gets its own row."""

    __tablename__ = "code_bundles"
    __table_args__ = (UniqueConstraint("org_id", "digest"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(71))  # sha256:<hex> of the .tar.gz
    size: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[int] = mapped_column(Integer, default=0)
    store_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("data_stores.id", ondelete="SET NULL"), nullable=True
    )
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DatasetTeamAccess(Base):
    """Teams whose members may read a restricted dataset (on top of `DatasetAccess`)."""

    __tablename__ = "dataset_team_access"

    dataset_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True, index=True
    )
