"""job_subruns: subflow runs a job's flow created through the Prefect proxy

Revision ID: 0025
Revises: 0020
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orgs.db

revision = "0025"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_subruns",
        sa.Column("flow_run_id", sa.Uuid(), primary_key=True),
        sa.Column(
            "job_id", sa.Uuid(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("parent_flow_run_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", orgs.db.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_job_subruns_job_id", "job_subruns", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_job_subruns_job_id", table_name="job_subruns")
    op.drop_table("job_subruns")
