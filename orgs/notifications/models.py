"""The notification tables: targets, the outbox, offline notices, per-user preferences."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from orgs.db import Base, UTCDateTime, utcnow
from orgs.models import BigId, JSONType, new_id

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
MAX_URL_LENGTH: Final = 2048


class NotificationTarget(Base):
    """Where an organization's notifications go. The secret signs generic webhooks, so it
    is kept as given (it must be usable); it is never returned by the API."""

    __tablename__ = "notification_targets"
    __table_args__ = (Index("ix_notification_targets_org_id", "org_id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # one of targets.KINDS
    url: Mapped[str] = mapped_column(String(MAX_URL_LENGTH))  # e-mail: mailto:<address>
    secret: Mapped[str | None] = mapped_column(String(256), nullable=True)
    events: Mapped[list[str]] = mapped_column(JSONType, default=list)  # [] = every event
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)


class NotificationOutbox(Base):
    """One delivery of one event to one target, or to one user's e-mail address (a
    personal "my job ended" mail); written in the event's transaction."""

    __tablename__ = "notification_outbox"
    __table_args__ = (
        Index("ix_notification_outbox_due", "status", "next_attempt_at"),
        Index("ix_notification_outbox_org_id_id", "org_id", "id"),
        CheckConstraint("(target_id IS NULL) <> (user_id IS NULL)", name="one_recipient"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    target_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("notification_targets.id", ondelete="CASCADE"), index=True, nullable=True
    )
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=True
    )
    event: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class MachineOfflineNotice(Base):
    """The heartbeat after which a machine was last announced offline (one per silence)."""

    __tablename__ = "machine_offline_notices"

    machine_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), primary_key=True
    )
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)


class UserNotificationSettings(Base):
    """A user's own notification choices; no row means the defaults."""

    __tablename__ = "user_notification_settings"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    job_email: Mapped[str] = mapped_column(String(16))  # preferences.JOB_EMAIL
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
