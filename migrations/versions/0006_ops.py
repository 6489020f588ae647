"""ops: notification targets and outbox, offline notices, indexes for the usage views

Revision ID: 0006
Revises: 0002
Create Date: 2026-11-22 09:00:00

The three job-ledger indexes serve orgs.usage_views (overview, per-user usage, idle
machines); see the docstring there for which query uses which.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import orgs.db

revision = "0006"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "notification_targets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("secret", sa.String(length=256), nullable=True),
        sa.Column("events", JSON, nullable=False),
        sa.Column("created_at", orgs.db.UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_notification_targets_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_targets")),
    )
    op.create_index("ix_notification_targets_org_id", "notification_targets", ["org_id"])

    op.create_table(
        "notification_outbox",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("target_id", sa.Uuid(), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", orgs.db.UTCDateTime(), nullable=False),
        sa.Column("locked_until", orgs.db.UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("created_at", orgs.db.UTCDateTime(), nullable=False),
        sa.Column("delivered_at", orgs.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_notification_outbox_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["notification_targets.id"],
            name=op.f("fk_notification_outbox_target_id_notification_targets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_outbox")),
    )
    op.create_index(
        "ix_notification_outbox_due", "notification_outbox", ["status", "next_attempt_at"]
    )
    op.create_index("ix_notification_outbox_org_id_id", "notification_outbox", ["org_id", "id"])
    op.create_index(
        "ix_notification_outbox_target_id", "notification_outbox", ["target_id"]
    )

    op.create_table(
        "machine_offline_notices",
        sa.Column("machine_id", sa.Uuid(), nullable=False),
        sa.Column("heartbeat_at", orgs.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["machines.id"],
            name=op.f("fk_machine_offline_notices_machine_id_machines"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("machine_id", name=op.f("pk_machine_offline_notices")),
    )

    # Compute-time sums over a window: range on ended_at, the rest covered.
    op.create_index(
        "ix_jobs_org_ended",
        "jobs",
        ["org_id", "ended_at", "started_at", "machine_type", "user_id"],
    )
    # Jobs held in a window (created_at range).
    op.create_index("ix_jobs_org_created", "jobs", ["org_id", "created_at"])
    # A machine's last finished job: max(ended_at) per machine is one index probe.
    op.create_index("ix_jobs_machine_ended", "jobs", ["machine_id", "ended_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_machine_ended", table_name="jobs")
    op.drop_index("ix_jobs_org_created", table_name="jobs")
    op.drop_index("ix_jobs_org_ended", table_name="jobs")
    op.drop_table("machine_offline_notices")
    op.drop_index("ix_notification_outbox_target_id", table_name="notification_outbox")
    op.drop_index("ix_notification_outbox_org_id_id", table_name="notification_outbox")
    op.drop_index("ix_notification_outbox_due", table_name="notification_outbox")
    op.drop_table("notification_outbox")
    op.drop_index("ix_notification_targets_org_id", table_name="notification_targets")
    op.drop_table("notification_targets")
