"""rejoin requests and org profile: former_members, join_requests, org_logos, contact e-mail

Revision ID: 0028
Revises: 0020

`former_members` is filled from the audit log for people who left or were removed
before this revision (so they can ask to rejoin too); see orgs/join_requests.py.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import orgs.db

revision = "0028"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("organizations", sa.Column("contact_email", sa.String(320), nullable=True))
    op.create_table(
        "org_logos",
        sa.Column(
            "org_id",
            sa.Uuid(),
            sa.ForeignKey(
                "organizations.id",
                ondelete="CASCADE",
                name="fk_org_logos_org_id_organizations",
            ),
            primary_key=True,
        ),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("content_type", sa.String(32), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("updated_at", orgs.db.UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint("org_id", name="pk_org_logos"),
    )
    op.create_table(
        "former_members",
        sa.Column(
            "org_id",
            sa.Uuid(),
            sa.ForeignKey(
                "organizations.id",
                ondelete="CASCADE",
                name="fk_former_members_org_id_organizations",
            ),
            nullable=False,
        ),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_former_members_user_id_users"),
            nullable=False,
        ),
        sa.Column("how", sa.String(16), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("left_at", orgs.db.UTCDateTime(), nullable=False),
        sa.Column("rejoin_blocked", sa.Boolean(), nullable=False),
        sa.Column("blocked_by", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint("org_id", "user_id", name="pk_former_members"),
    )
    op.create_table(
        "join_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "org_id",
            sa.Uuid(),
            sa.ForeignKey(
                "organizations.id",
                ondelete="CASCADE",
                name="fk_join_requests_org_id_organizations",
            ),
            nullable=False,
        ),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_join_requests_user_id_users"),
            nullable=False,
        ),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", orgs.db.UTCDateTime(), nullable=False),
        sa.Column("decided_at", orgs.db.UTCDateTime(), nullable=True),
        sa.Column("decided_by", sa.Uuid(), nullable=True),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_join_requests"),
    )
    op.create_index("ix_join_requests_org_id_status", "join_requests", ["org_id", "status"])
    op.create_index("ix_join_requests_user_id", "join_requests", ["user_id"])
    op.create_index(
        "uq_join_requests_pending",
        "join_requests",
        ["org_id", "user_id"],
        unique=True,
        sqlite_where=sa.text("status = 'pending'"),
        postgresql_where=sa.text("status = 'pending'"),
    )
    _backfill_former_members()


def _backfill_former_members() -> None:
    """Who left or was removed before this revision, from the audit log (newest wins)."""
    conn = op.get_bind()
    audit = sa.table(
        "audit_events",
        sa.column("org_id", sa.Uuid()),
        sa.column("action", sa.String()),
        sa.column("target_id", sa.String()),
        sa.column("before", sa.JSON()),
        sa.column("created_at", orgs.db.UTCDateTime()),
    )
    rows = conn.execute(
        sa.select(audit.c.org_id, audit.c.action, audit.c.target_id, audit.c.before, audit.c.created_at)
        .where(audit.c.action.in_(("member.left", "member.removed")))
        .order_by(audit.c.created_at)
    ).all()
    latest: dict[tuple[uuid.UUID, uuid.UUID], tuple[str, str, datetime]] = {}
    for org_id, action, target_id, before, created_at in rows:
        try:
            user_id = uuid.UUID(str(target_id))
        except ValueError:
            continue
        role = (before or {}).get("role", "member") if isinstance(before, dict) else "member"
        how = "left" if action == "member.left" else "removed"
        latest[(org_id, user_id)] = (how, str(role), created_at or datetime.now(UTC))
    if not latest:
        return
    # Typed tables, so ids come back as UUIDs on both backends.
    organizations = sa.table("organizations", sa.column("id", sa.Uuid()))
    users_t = sa.table("users", sa.column("id", sa.Uuid()))
    memberships = sa.table(
        "memberships", sa.column("org_id", sa.Uuid()), sa.column("user_id", sa.Uuid())
    )
    orgs_ = set(conn.execute(sa.select(organizations.c.id)).scalars())
    users = set(conn.execute(sa.select(users_t.c.id)).scalars())
    members = {
        (o, u)
        for o, u in conn.execute(sa.select(memberships.c.org_id, memberships.c.user_id)).all()
    }
    former = sa.table(
        "former_members",
        sa.column("org_id", sa.Uuid()),
        sa.column("user_id", sa.Uuid()),
        sa.column("how", sa.String()),
        sa.column("role", sa.String()),
        sa.column("left_at", orgs.db.UTCDateTime()),
        sa.column("rejoin_blocked", sa.Boolean()),
    )
    values = [
        {
            "org_id": org_id,
            "user_id": user_id,
            "how": how,
            "role": role,
            "left_at": when if when.tzinfo else when.replace(tzinfo=UTC),
            "rejoin_blocked": False,
        }
        for (org_id, user_id), (how, role, when) in latest.items()
        if org_id in orgs_ and user_id in users and (org_id, user_id) not in members
    ]
    if values:
        op.bulk_insert(former, values)


def downgrade() -> None:
    op.drop_index("uq_join_requests_pending", table_name="join_requests")
    op.drop_index("ix_join_requests_user_id", table_name="join_requests")
    op.drop_index("ix_join_requests_org_id_status", table_name="join_requests")
    op.drop_table("join_requests")
    op.drop_table("former_members")
    op.drop_table("org_logos")
    with op.batch_alter_table("organizations") as batch:
        batch.drop_column("contact_email")
