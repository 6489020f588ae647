"""merge the parallel branches (teams and visibility, project stores, job metric series,
elastic machine types) into one head

Revision ID: 0038
Revises: 0030, 0031, 0032, 0036
"""

from __future__ import annotations

revision = "0038"
down_revision = ("0030", "0031", "0032", "0036")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
