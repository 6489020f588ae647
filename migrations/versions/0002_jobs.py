"""jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 05:55:51.665924
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
import orgs.db

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('leases',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=False),
    sa.Column('expires_at', orgs.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_leases'))
    )
    op.create_table('deployments',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('org_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('flow_name', sa.String(length=128), nullable=False),
    sa.Column('entrypoint', sa.String(length=512), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=True),
    sa.Column('machine_type', sa.String(length=32), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('tags', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('parameters', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('parameter_schema', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('job_variables', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('prefect_deployment_id', sa.Uuid(), nullable=True),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('created_at', orgs.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', orgs.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_deployments_created_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_deployments_org_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deployments')),
    sa.UniqueConstraint('org_id', 'name', name=op.f('uq_deployments_org_id'))
    )
    op.create_table('jobs',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('org_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('deployment_id', sa.Uuid(), nullable=True),
    sa.Column('schedule_id', sa.Uuid(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('machine_type', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('parameters', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('memory_mb', sa.Integer(), nullable=False),
    sa.Column('max_runtime_s', sa.Integer(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('tags', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('inputs', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('job_metadata', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('idempotency_key', sa.String(length=128), nullable=True),
    sa.Column('flow_run_id', sa.Uuid(), nullable=True),
    sa.Column('prefect_state', sa.String(length=64), nullable=False),
    sa.Column('machine_id', sa.Uuid(), nullable=True),
    sa.Column('created_at', orgs.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', orgs.db.UTCDateTime(), nullable=False),
    sa.Column('released_at', orgs.db.UTCDateTime(), nullable=True),
    sa.Column('claimed_at', orgs.db.UTCDateTime(), nullable=True),
    sa.Column('started_at', orgs.db.UTCDateTime(), nullable=True),
    sa.Column('ended_at', orgs.db.UTCDateTime(), nullable=True),
    sa.Column('cancel_requested_at', orgs.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_jobs_deployment_id_deployments'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_jobs_org_id_organizations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_jobs_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('flow_run_id', name=op.f('uq_jobs_flow_run_id')),
    sa.UniqueConstraint('org_id', 'user_id', 'idempotency_key', name=op.f('uq_jobs_org_id'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_deployment_id'), ['deployment_id'], unique=False)
        batch_op.create_index('ix_jobs_org_state_priority', ['org_id', 'state', 'priority', 'created_at'], unique=False)
        batch_op.create_index('ix_jobs_org_user_state', ['org_id', 'user_id', 'state'], unique=False)
        batch_op.create_index('ix_jobs_state_updated', ['state', 'updated_at'], unique=False)

    op.create_table('schedules',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('org_id', sa.Uuid(), nullable=False),
    sa.Column('deployment_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('cron', sa.String(length=128), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('parameters', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('prefect_schedule_id', sa.Uuid(), nullable=True),
    sa.Column('created_at', orgs.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_schedules_deployment_id_deployments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_schedules_org_id_organizations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_schedules_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schedules'))
    )
    with op.batch_alter_table('schedules', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_schedules_org_id'), ['org_id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('schedules', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_schedules_org_id'))

    op.drop_table('schedules')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_state_updated')
        batch_op.drop_index('ix_jobs_org_user_state')
        batch_op.drop_index('ix_jobs_org_state_priority')
        batch_op.drop_index(batch_op.f('ix_jobs_deployment_id'))

    op.drop_table('jobs')
    op.drop_table('deployments')
    op.drop_table('leases')

