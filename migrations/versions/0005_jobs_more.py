"""jobs: the Prefect outbox (work for Prefect that outlives the rows it came from) and
covering indexes for the admission counts

Revision ID: 0005
Revises: 0002
Create Date: 2026-11-21 06:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orgs.db

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prefect_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.Uuid(), nullable=False),
        sa.Column("deployment_id", sa.Uuid(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", orgs.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prefect_outbox")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_org_user_state_type",
            ["org_id", "user_id", "state", "machine_type"],
            unique=False,
        )
        batch_op.create_index(
            "ix_jobs_org_state_type", ["org_id", "state", "machine_type"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_org_state_type")
        batch_op.drop_index("ix_jobs_org_user_state_type")
    op.drop_table("prefect_outbox")
