"""merge the parallel branches (notifications, clean ends, login throttle, storage)

Revision ID: 0016
Revises: 0009, 0011, 0013, 0014
"""

from __future__ import annotations

revision = "0016"
down_revision = ("0009", "0011", "0013", "0014")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
