"""notifications: members' own job e-mails (a preference table, outbox rows per user)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 10:00:00

An outbox row now goes either to an org's target or to one user's address; the check
constraint keeps it exactly one of the two.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orgs.db

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_notification_settings",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("job_email", sa.String(length=16), nullable=False),
        sa.Column("updated_at", orgs.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_notification_settings_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_notification_settings")),
    )
    with op.batch_alter_table("notification_outbox", schema=None) as batch_op:
        batch_op.alter_column("target_id", existing_type=sa.Uuid(), nullable=True)
        batch_op.add_column(sa.Column("user_id", sa.Uuid(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_notification_outbox_user_id_users"),
            "users",
            ["user_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_index("ix_notification_outbox_user_id", ["user_id"], unique=False)
        batch_op.create_check_constraint(
            op.f("ck_notification_outbox_one_recipient"), "(target_id IS NULL) <> (user_id IS NULL)"
        )


def downgrade() -> None:
    op.execute("DELETE FROM notification_outbox WHERE target_id IS NULL")
    with op.batch_alter_table("notification_outbox", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_notification_outbox_one_recipient"), type_="check")
        batch_op.drop_index("ix_notification_outbox_user_id")
        batch_op.drop_constraint(
            batch_op.f("fk_notification_outbox_user_id_users"), type_="foreignkey"
        )
        batch_op.drop_column("user_id")
        batch_op.alter_column("target_id", existing_type=sa.Uuid(), nullable=False)
    op.drop_table("user_notification_settings")
