"""usage views: partial indexes for held jobs and open jobs

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 09:00:00

Two small partial indexes for orgs.usage_views (see its docstring):

- ``ix_jobs_org_held_created``: jobs that waited for a slot (held now, or released
  later than submitted), by (org, created_at). "Jobs held in a window" becomes an
  index-only range scan over those jobs alone instead of every job created in the window
  (it was a sequential scan on PostgreSQL and a row lookup per job on SQLite).
- ``ix_jobs_org_open``: non-final jobs by (org, state). Only the few open jobs are in
  it, so SQLite's planner (whose statistics say that (org, state) is not selective: most
  rows are final) uses it instead of scanning the table.

The queries repeat each predicate with literal values (not bind parameters): both
PostgreSQL (also for generic plans of prepared statements) and SQLite only use a partial
index when the query's WHERE clause visibly implies the index's predicate.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

HELD_PREDICATE = "state = 'held' OR released_at > created_at"
OPEN_PREDICATE = "state IN ('held', 'scheduled', 'running', 'cancelling')"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_org_held_created",
        "jobs",
        ["org_id", "created_at", "user_id"],
        postgresql_where=sa.text(HELD_PREDICATE),
        sqlite_where=sa.text(HELD_PREDICATE),
    )
    op.create_index(
        "ix_jobs_org_open",
        "jobs",
        ["org_id", "state"],
        postgresql_where=sa.text(OPEN_PREDICATE),
        sqlite_where=sa.text(OPEN_PREDICATE),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_org_open", table_name="jobs")
    op.drop_index("ix_jobs_org_held_created", table_name="jobs")
