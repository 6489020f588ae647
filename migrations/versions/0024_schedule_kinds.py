"""interval and rrule schedules, prefect.yaml schedules, per-deployment concurrency limits

Revision ID: 0024
Revises: 0020

Columns only (ADD COLUMN, in place on SQLite too): `schedules.kind` (cron | interval |
rrule) with `interval_s`, `anchor_date`, `rrule`, and `declared` (from a prefect.yaml);
`deployments.concurrency_limit` and `collision_strategy` (enforced by our admission),
and the index its count uses (`ix_jobs_deployment_state`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orgs.db

revision = "0024"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "schedules", sa.Column("kind", sa.String(length=16), nullable=False, server_default="cron")
    )
    op.add_column("schedules", sa.Column("interval_s", sa.Float(), nullable=True))
    op.add_column("schedules", sa.Column("anchor_date", orgs.db.UTCDateTime(), nullable=True))
    op.add_column("schedules", sa.Column("rrule", sa.Text(), nullable=True))
    op.add_column(
        "schedules",
        sa.Column("declared", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("deployments", sa.Column("concurrency_limit", sa.Integer(), nullable=True))
    op.add_column(
        "deployments",
        sa.Column(
            "collision_strategy", sa.String(length=16), nullable=False, server_default="enqueue"
        ),
    )
    op.create_index("ix_jobs_deployment_state", "jobs", ["deployment_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_jobs_deployment_state", table_name="jobs")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("collision_strategy")
        batch.drop_column("concurrency_limit")
    with op.batch_alter_table("schedules") as batch:
        for name in ("declared", "rrule", "anchor_date", "interval_s", "kind"):
            batch.drop_column(name)
