"""Tables of the tenancy layer: users, tokens, organizations, memberships, invitations,
settings versions, machines (and why retired machine tokens stopped working) and the
audit log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from orgs.db import Base, UTCDateTime, utcnow

JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def new_id() -> uuid.UUID:
    return uuid.uuid4()


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """Session and personal access tokens. Only the SHA-256 of the secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # session | personal
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When this session last proved a two-factor code (orgs.two_factor); None otherwise.
    second_factor_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The sign-in provider the session signed in through (orgs.sso); None: a password.
    # A personal token created from such a session carries it on (for `sso.required`).
    sso_provider: Mapped[str | None] = mapped_column(String(32), nullable=True)

    user: Mapped[User] = relationship(lazy="joined")


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The current settings document (see orgs.settings_service) and its version number.
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    settings_version: Mapped[int] = mapped_column(Integer, default=1)
    # Where people reach the organization's admins (console header, invitations).
    contact_email: Mapped[str | None] = mapped_column(String(320), nullable=True)


class SettingsVersion(Base):
    """Every settings document an organization has had, newest last."""

    __tablename__ = "settings_versions"
    __table_args__ = (UniqueConstraint("org_id", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("org_id", "user_id"),
        Index("ix_memberships_user_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship(lazy="joined")


class Invitation(Base):
    __tablename__ = "invitations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    max_uses: Mapped[int | None] = mapped_column(Integer, nullable=True)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Machine(Base):
    """A member's machine shared with the organization. Its agent holds a machine token."""

    __tablename__ = "machines"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    owner_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(64))
    machine_type: Mapped[str] = mapped_column(String(32))
    hardware: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    slots: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16))  # pending | approved | rejected
    # Why an admin rejected it (told to its agent); empty otherwise.
    status_reason: Mapped[str] = mapped_column(Text, default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    running_jobs: Mapped[int] = mapped_column(Integer, default=0)
    last_job_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RetiredMachineToken(Base):
    """Why a machine token stopped working: the machine row (and with it the token's
    hash) is gone, so this is what lets its agent be told *why* (orgs.machines).

    `code` is stable for agents: `machine_removed`, `owner_not_member`, `org_deleted`.
    No foreign keys: the record outlives the machine and the organization.
    """

    __tablename__ = "retired_machine_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    machine_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    code: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    retired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    """Who did what, when, with the before/after. Written in the changing transaction.

    `org_id` is a plain column, not a foreign key: the record of an organization's
    deletion outlives the organization.
    """

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_org_id_id", "org_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    actor_name: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32), default="")
    target_id: Mapped[str] = mapped_column(String(64), default="")
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OrgLogo(Base):
    """An organization's logo: re-encoded PNG bytes (orgs.logos), served to members."""

    __tablename__ = "org_logos"

    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    content: Mapped[bytes] = mapped_column(LargeBinary)
    content_type: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)


class FormerMember(Base):
    """Someone who left or was removed: who may ask to rejoin (orgs.join_requests).

    `rejoin_blocked`: removed with "do not allow rejoin"; such a user cannot ask.
    """

    __tablename__ = "former_members"

    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    how: Mapped[str] = mapped_column(String(16))  # left | removed
    role: Mapped[str] = mapped_column(String(16))
    left_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    rejoin_blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    blocked_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)


class JoinRequest(Base):
    """A former member's request to rejoin; an admin approves (with a role) or denies."""

    __tablename__ = "join_requests"
    __table_args__ = (
        Index("ix_join_requests_org_id_status", "org_id", "status"),
        # At most one pending request per person and organization.
        Index(
            "uq_join_requests_pending",
            "org_id",
            "user_id",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    note: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16))  # pending | approved | denied
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    decided_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)  # when approved
    reason: Mapped[str] = mapped_column(Text, default="")  # when denied

    user: Mapped[User] = relationship(lazy="joined")


class SsoIdentity(Base):
    """An account at a sign-in provider linked to a user (orgs.sso)."""

    __tablename__ = "sso_identities"
    __table_args__ = (UniqueConstraint("provider", "subject"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    provider: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(255))  # OIDC `sub`, GitHub's user id
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SsoFlow(Base):
    """One sign-in at a provider, from start to the session it ends in (minutes).

    Kept in the database so any replica can take the provider's callback. `state_hash`
    and `poll_hash` are SHA-256 of secrets held by the browser and the CLI.
    """

    __tablename__ = "sso_flows"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    state_hash: Mapped[str] = mapped_column(String(64), unique=True)
    provider: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(8))  # web | cli
    code_verifier: Mapped[str] = mapped_column(String(128))
    nonce: Mapped[str] = mapped_column(String(64))
    next_url: Mapped[str] = mapped_column(Text, default="")
    # CLI sign-ins: the poll secret's hash and the code shown in the terminal.
    poll_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    user_code: Mapped[str] = mapped_column(String(16), default="")
    # started | link (an account has the e-mail: confirm) | approve (CLI: confirm the
    # code) | done (CLI: the next poll gets the session)
    status: Mapped[str] = mapped_column(String(16), default="started")
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=True
    )
    subject: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CapacityProvider(Base):
    """Elastic capacity of one machine type (orgs.capacity): what starts and stops its
    machines, and how many. `owner_id` is the admin who configured it: the machines it
    starts are theirs (approved at once). `detached`: being removed; its machines drain
    and stop, then the row goes (flows.dispatch.scaler)."""

    __tablename__ = "capacity_providers"
    __table_args__ = (UniqueConstraint("org_id", "machine_type"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    machine_type: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))  # process | docker
    # Kind-specific: docker {engine_url, image, network}; process {flows_dir}.
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    slots: Mapped[int] = mapped_column(Integer, default=1)
    min_scale: Mapped[int] = mapped_column(Integer, default=0)
    max_scale: Mapped[int] = mapped_column(Integer, default=5)
    grace_period_s: Mapped[int] = mapped_column(Integer, default=900)
    owner_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    detached: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ProvisionedMachine(Base):
    """A machine a capacity provider started: the provider's handle on it (pid and work
    dir, or container id) and its phase. Keyed by the machine's id, without a foreign key:
    the record outlives a machine an admin removed, so its process is still stopped."""

    __tablename__ = "provisioned_machines"

    machine_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("capacity_providers.id", ondelete="CASCADE"), index=True
    )
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    name: Mapped[str] = mapped_column(String(64))
    phase: Mapped[str] = mapped_column(String(16))  # starting | ready | draining
    handle: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ever_online: Mapped[bool] = mapped_column(Boolean, default=False)
    idle_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Team(Base):
    """A named group of an organization's members (orgs.teams): projects may be visible
    to chosen teams only, and a team may carry limits on top of each member's own
    (`max_concurrent_jobs` for its members combined; `machine_types` they may use,
    None: any)."""

    __tablename__ = "teams"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    machine_types: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TeamMember(Base):
    """A member of a team (always a member of the team's organization: removing them
    from the organization removes these rows in the same transaction)."""

    __tablename__ = "team_members"

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
