"""elastic machine types: capacity_providers, provisioned_machines

Revision ID: 0036
Revises: 0029

See orgs/capacity.py (the providers an admin attaches to a machine type) and
flows/dispatch/scaler.py (the loop that starts and stops their machines).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import orgs.db

revision = "0036"
down_revision = "0029"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "capacity_providers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("machine_type", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("config", _JSON, nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("min_scale", sa.Integer(), nullable=False),
        sa.Column("max_scale", sa.Integer(), nullable=False),
        sa.Column("grace_period_s", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("detached", sa.Boolean(), nullable=False),
        sa.Column("created_at", orgs.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", orgs.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_capacity_providers_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_capacity_providers_owner_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_capacity_providers")),
        sa.UniqueConstraint(
            "org_id", "machine_type", name=op.f("uq_capacity_providers_org_id_machine_type")
        ),
    )
    op.create_table(
        "provisioned_machines",
        sa.Column("machine_id", sa.Uuid(), nullable=False),
        sa.Column("provider_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("handle", _JSON, nullable=False),
        sa.Column("started_at", orgs.db.UTCDateTime(), nullable=False),
        sa.Column("ever_online", sa.Boolean(), nullable=False),
        sa.Column("idle_since", orgs.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["capacity_providers.id"],
            name=op.f("fk_provisioned_machines_provider_id_capacity_providers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("machine_id", name=op.f("pk_provisioned_machines")),
    )
    op.create_index(
        op.f("ix_provisioned_machines_provider_id"), "provisioned_machines", ["provider_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_provisioned_machines_provider_id"), table_name="provisioned_machines")
    op.drop_table("provisioned_machines")
    op.drop_table("capacity_providers")
