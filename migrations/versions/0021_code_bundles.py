"""code bundles: `code_bundles` (who owns which uploaded bundle), `deployments.code` and
`jobs.code` (the code a deployment names, copied onto each job at submission)

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import orgs.db

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "code_bundles",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("store_id", sa.Uuid(), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", orgs.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_code_bundles_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["store_id"],
            ["data_stores.id"],
            name=op.f("fk_code_bundles_store_id_data_stores"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_code_bundles_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_code_bundles")),
        sa.UniqueConstraint("org_id", "digest", name=op.f("uq_code_bundles_org_id")),
    )
    # Plain nullable columns: ADD COLUMN in place on SQLite too (no batch copy, whose
    # table drop would run the foreign keys' ON DELETE actions).
    op.add_column("deployments", sa.Column("code", JSON, nullable=True))
    op.add_column("jobs", sa.Column("code", JSON, nullable=True))


def downgrade() -> None:
    bind = op.get_bind()
    for table in ("jobs", "deployments"):
        if bind.dialect.name == "sqlite":
            op.execute(f"ALTER TABLE {table} DROP COLUMN code")
        else:
            op.drop_column(table, "code")
    op.drop_table("code_bundles")
