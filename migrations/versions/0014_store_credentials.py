"""data stores: an organization's own access key for its S3 store

Revision ID: 0014
Revises: 0008

Organizations' stores no longer fall back to the API server's AWS credentials (unless
the operator allows it): the key an org admin gives is kept with the store, never
returned by the API.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0008"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("data_stores") as batch:
        batch.add_column(sa.Column("credentials", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("data_stores") as batch:
        batch.drop_column("credentials")
