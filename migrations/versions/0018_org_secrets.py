"""org secrets: named values encrypted with the server key, never returned

Revision ID: 0018
Revises: 0008

`org_secrets` holds one Fernet token per (organization, name); see orgs/secrets.py.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orgs.db

revision = "0018"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "org_secrets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("created_at", orgs.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", orgs.db.UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_org_secrets_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["updated_by"],
            ["users.id"],
            name=op.f("fk_org_secrets_updated_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_org_secrets")),
        sa.UniqueConstraint("org_id", "name", name=op.f("uq_org_secrets_org_id")),
    )


def downgrade() -> None:
    op.drop_table("org_secrets")
