"""project data stores: data_stores.project_id

Revision ID: 0031
Revises: 0029

A store row with a project is that project's default store: the outputs of its jobs go
there (datasets/stores.py). NULL: the organization's store, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0031"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("data_stores") as batch:
        # No foreign key: a deleted project must not take the store row (and with it the
        # blobs of the outputs stored there) along.
        batch.add_column(sa.Column("project_id", sa.Uuid(), nullable=True))
        batch.create_index("ix_data_stores_project_id", ["project_id"])


def downgrade() -> None:
    with op.batch_alter_table("data_stores") as batch:
        batch.drop_index("ix_data_stores_project_id")
        batch.drop_column("project_id")
