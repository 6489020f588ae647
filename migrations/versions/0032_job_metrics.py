"""job_metrics: metric series over steps that jobs log (flows.job_metrics); on
PostgreSQL a GIN index on jobs.tags for `GET /orgs/{org}/jobs?tag=`

Revision ID: 0032
Revises: 0029
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orgs.db
from orgs.models import BigId

revision = "0032"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_metrics",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "job_id",
            sa.Uuid(),
            sa.ForeignKey("jobs.id", ondelete="CASCADE", name="fk_job_metrics_job_id_jobs"),
            nullable=False,
        ),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("logged_at", orgs.db.UTCDateTime(), nullable=False),
        sa.UniqueConstraint("job_id", "key", "step", name="uq_job_metrics_job_id"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE INDEX ix_jobs_tags ON jobs USING gin (tags jsonb_path_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_jobs_tags")
    op.drop_table("job_metrics")
