"""login throttle: per-account and per-address failure state; drop the old lockout columns

Revision ID: 0013
Revises: 0008

`login_throttle` holds one row per hashed (kind, key) for orgs.login_throttle, shared by
every API replica. The per-user lockout it replaces (`users.failed_logins`,
`users.locked_until`) locked accounts for minutes and only for known e-mails; those
columns go. Plain `ALTER TABLE ... DROP COLUMN` (SQLite >= 3.35, PostgreSQL): no batch
table copy of `users`, which many tables reference.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orgs.db

revision = "0013"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("blocked_until", sa.Float(), nullable=False),
        sa.Column("last_failure_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", name=op.f("pk_login_throttle")),
    )
    op.create_index(
        "ix_login_throttle_last_failure_at", "login_throttle", ["last_failure_at"], unique=False
    )
    op.execute("ALTER TABLE users DROP COLUMN failed_logins")
    op.execute("ALTER TABLE users DROP COLUMN locked_until")


def downgrade() -> None:
    op.add_column(
        "users", sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column("users", sa.Column("locked_until", orgs.db.UTCDateTime(), nullable=True))
    op.drop_index("ix_login_throttle_last_failure_at", table_name="login_throttle")
    op.drop_table("login_throttle")
