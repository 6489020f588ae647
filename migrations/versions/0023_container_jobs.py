"""container jobs: org registries, and the image a job ran

Revision ID: 0023
Revises: 0020

`org_registries`: an organization's private Docker registries (`host[/namespace]`,
username); the password is an org secret (`secret_name`, orgs/secrets.py), sealed like
every other. `jobs.image`: `{ref, digest}` of a container job (the digest written by
the machine that pulled it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import orgs.db

revision = "0023"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "org_registries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("prefix", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("secret_name", sa.String(length=64), nullable=False),
        sa.Column("created_at", orgs.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", orgs.db.UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_org_registries_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_org_registries_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_org_registries")),
        sa.UniqueConstraint("org_id", "prefix", name=op.f("uq_org_registries_org_id")),
    )
    json_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("image", json_type, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("image")
    op.drop_table("org_registries")
