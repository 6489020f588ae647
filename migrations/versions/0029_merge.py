"""merge the parallel branches (code bundles, container jobs, schedule kinds, subflow
runs, two-factor, single sign-on, rejoin and org profile) into one head

Revision ID: 0029
Revises: 0021, 0023, 0024, 0025, 0026, 0027, 0028
"""

from __future__ import annotations

revision = "0029"
down_revision = ("0021", "0023", "0024", "0025", "0026", "0027", "0028")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
