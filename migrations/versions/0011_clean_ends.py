"""clean ends: why a machine token was retired; outbox targets named, not only ids

Revision ID: 0011
Revises: 0008

`retired_machine_tokens` tells the agent of a removed machine why its token stopped
working (machine removed, owner no longer a member, organization deleted).
`prefect_outbox.target_name` carries targets Prefect knows by name (work pools).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orgs.db

revision = "0011"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retired_machine_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("machine_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("retired_at", orgs.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_retired_machine_tokens")),
    )
    with op.batch_alter_table("prefect_outbox") as batch:
        batch.add_column(sa.Column("target_name", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prefect_outbox") as batch:
        batch.drop_column("target_name")
    op.drop_table("retired_machine_tokens")
