"""projects: a group of deployments; every org gets `default`, holding its deployments

Revision ID: 0019
Revises: 0008

`deployments.project_id` is added in place on SQLite (ALTER TABLE ... ADD COLUMN with
its REFERENCES clause), not by batch copy: dropping the old `deployments` table with
foreign keys on would run its ON DELETE actions on jobs and schedules.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

import orgs.db

revision = "0019"
down_revision = "0008"
branch_labels = None
depends_on = None

DEFAULT_PROJECT = "default"


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("git_url", sa.String(length=1024), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", orgs.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_projects_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_projects_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("org_id", "name", name=op.f("uq_projects_org_id")),
    )
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE deployments ADD COLUMN project_id CHAR(32) "
            "REFERENCES projects (id) ON DELETE SET NULL"
        )
    else:
        op.add_column("deployments", sa.Column("project_id", sa.Uuid(), nullable=True))
        op.create_foreign_key(
            op.f("fk_deployments_project_id_projects"),
            "deployments",
            "projects",
            ["project_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_index(op.f("ix_deployments_project_id"), "deployments", ["project_id"])

    # Backfill: every organization gets its `default` project (nobody's own: admins
    # manage it), and its deployments move into it.
    orgs_table = sa.table("organizations", sa.column("id", sa.Uuid()))
    projects = sa.table(
        "projects",
        sa.column("id", sa.Uuid()),
        sa.column("org_id", sa.Uuid()),
        sa.column("name", sa.String()),
        sa.column("description", sa.Text()),
        sa.column("created_at", orgs.db.UTCDateTime()),
    )
    deployments = sa.table(
        "deployments", sa.column("org_id", sa.Uuid()), sa.column("project_id", sa.Uuid())
    )
    now = orgs.db.utcnow()
    org_ids = list(bind.execute(sa.select(orgs_table.c.id)).scalars())
    if org_ids:
        bind.execute(
            projects.insert(),
            [
                {
                    "id": uuid.uuid4(),
                    "org_id": org_id,
                    "name": DEFAULT_PROJECT,
                    "description": "Deployments registered without a project.",
                    "created_at": now,
                }
                for org_id in org_ids
            ],
        )
    default_of_org = (
        sa.select(projects.c.id)
        .where(projects.c.org_id == deployments.c.org_id, projects.c.name == DEFAULT_PROJECT)
        .scalar_subquery()
    )
    bind.execute(sa.update(deployments).values(project_id=default_of_org))


def downgrade() -> None:
    bind = op.get_bind()
    op.drop_index(op.f("ix_deployments_project_id"), table_name="deployments")
    if bind.dialect.name == "sqlite":
        op.execute("ALTER TABLE deployments DROP COLUMN project_id")
    else:
        op.drop_constraint(
            op.f("fk_deployments_project_id_projects"), "deployments", type_="foreignkey"
        )
        op.drop_column("deployments", "project_id")
    op.drop_table("projects")
