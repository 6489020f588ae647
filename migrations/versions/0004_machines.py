"""machines: the reason a machine was rejected (told to its agent)

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-21 07:00:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('status_reason', sa.Text(), nullable=False, server_default='')
        )


def downgrade() -> None:
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.drop_column('status_reason')
