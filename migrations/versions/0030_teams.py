"""teams, team members, project visibility (org | teams | personal), project teams and
dataset team access

Revision ID: 0030
Revises: 0029

Existing projects stay visible to the whole organization (`visibility` = 'org').
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import orgs.db

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "org_id",
            sa.Uuid(),
            sa.ForeignKey(
                "organizations.id", ondelete="CASCADE", name="fk_teams_org_id_organizations"
            ),
            nullable=False,
        ),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("max_concurrent_jobs", sa.Integer(), nullable=True),
        sa.Column("machine_types", _JSON, nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", orgs.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_teams"),
        sa.UniqueConstraint("org_id", "name", name="uq_teams_org_id"),
    )
    op.create_table(
        "team_members",
        sa.Column(
            "team_id",
            sa.Uuid(),
            sa.ForeignKey("teams.id", ondelete="CASCADE", name="fk_team_members_team_id_teams"),
            nullable=False,
        ),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_team_members_user_id_users"),
            nullable=False,
        ),
        sa.Column("added_at", orgs.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "user_id", name="pk_team_members"),
    )
    op.create_index("ix_team_members_user_id", "team_members", ["user_id"])
    op.create_table(
        "project_teams",
        sa.Column(
            "project_id",
            sa.Uuid(),
            sa.ForeignKey(
                "projects.id", ondelete="CASCADE", name="fk_project_teams_project_id_projects"
            ),
            nullable=False,
        ),
        sa.Column(
            "team_id",
            sa.Uuid(),
            sa.ForeignKey("teams.id", ondelete="CASCADE", name="fk_project_teams_team_id_teams"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("project_id", "team_id", name="pk_project_teams"),
    )
    op.create_index("ix_project_teams_team_id", "project_teams", ["team_id"])
    op.create_table(
        "dataset_team_access",
        sa.Column(
            "dataset_id",
            sa.Uuid(),
            sa.ForeignKey(
                "datasets.id", ondelete="CASCADE", name="fk_dataset_team_access_dataset_id_datasets"
            ),
            nullable=False,
        ),
        sa.Column(
            "team_id",
            sa.Uuid(),
            sa.ForeignKey(
                "teams.id", ondelete="CASCADE", name="fk_dataset_team_access_team_id_teams"
            ),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("dataset_id", "team_id", name="pk_dataset_team_access"),
    )
    op.create_index("ix_dataset_team_access_team_id", "dataset_team_access", ["team_id"])
    with op.batch_alter_table("projects") as batch:
        batch.add_column(
            sa.Column("visibility", sa.String(16), nullable=False, server_default="org")
        )


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("visibility")
    op.drop_index("ix_dataset_team_access_team_id", table_name="dataset_team_access")
    op.drop_table("dataset_team_access")
    op.drop_index("ix_project_teams_team_id", table_name="project_teams")
    op.drop_table("project_teams")
    op.drop_index("ix_team_members_user_id", table_name="team_members")
    op.drop_table("team_members")
    op.drop_table("teams")
