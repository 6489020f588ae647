"""datasets: catalog, versions, blobs, access, data stores, job inputs, lineage, job tokens

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 06:18:34.360481
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
import orgs.db

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('data_stores',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('org_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('created_at', orgs.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_data_stores_created_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_data_stores_org_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_data_stores'))
    )
    with op.batch_alter_table('data_stores', schema=None) as batch_op:
        batch_op.create_index('ix_data_stores_org_id_active', ['org_id', 'active'], unique=False)

    op.create_table('datasets',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('org_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('visibility', sa.String(length=16), nullable=False),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('created_at', orgs.db.UTCDateTime(), nullable=False),
    sa.Column('deleted_at', orgs.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_datasets_created_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_datasets_org_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_datasets'))
    )
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.create_index('uq_datasets_org_id_name_live', ['org_id', 'name'], unique=True, sqlite_where=sa.text('deleted_at IS NULL'), postgresql_where=sa.text('deleted_at IS NULL'))

    op.create_table('dataset_access',
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dataset_access_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_dataset_access_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('dataset_id', 'user_id', name=op.f('pk_dataset_access'))
    )
    with op.batch_alter_table('dataset_access', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dataset_access_user_id'), ['user_id'], unique=False)

    op.create_table('dataset_blobs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('store_id', sa.Uuid(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('created_at', orgs.db.UTCDateTime(), nullable=False),
    sa.Column('purged_at', orgs.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['store_id'], ['data_stores.id'], name=op.f('fk_dataset_blobs_store_id_data_stores'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_blobs'))
    )
    with op.batch_alter_table('dataset_blobs', schema=None) as batch_op:
        batch_op.create_index('uq_dataset_blobs_default_sha256', ['sha256'], unique=True, sqlite_where=sa.text('store_id IS NULL'), postgresql_where=sa.text('store_id IS NULL'))
        batch_op.create_index('uq_dataset_blobs_store_sha256', ['store_id', 'sha256'], unique=True, sqlite_where=sa.text('store_id IS NOT NULL'), postgresql_where=sa.text('store_id IS NOT NULL'))

    op.create_table('dataset_versions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('file_count', sa.Integer(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('created_at', orgs.db.UTCDateTime(), nullable=False),
    sa.Column('produced_by_job_id', sa.Uuid(), nullable=True),
    sa.Column('tombstoned_at', orgs.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_dataset_versions_created_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dataset_versions_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['produced_by_job_id'], ['jobs.id'], name=op.f('fk_dataset_versions_produced_by_job_id_jobs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_versions')),
    sa.UniqueConstraint('dataset_id', 'version', name=op.f('uq_dataset_versions_dataset_id'))
    )
    with op.batch_alter_table('dataset_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dataset_versions_produced_by_job_id'), ['produced_by_job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_dataset_versions_sha256'), ['sha256'], unique=False)

    op.create_table('job_lineage',
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('code', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('image', sa.String(length=512), nullable=True),
    sa.Column('machine', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('parameters', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('resources_requested', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('resources_used', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('job_metadata', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('updated_at', orgs.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_lineage_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_job_lineage'))
    )
    op.create_table('job_tokens',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('created_at', orgs.db.UTCDateTime(), nullable=False),
    sa.Column('expires_at', orgs.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_tokens_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_job_tokens'))
    )
    with op.batch_alter_table('job_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_tokens_job_id'), ['job_id'], unique=False)

    op.create_table('dataset_version_files',
    sa.Column('version_id', sa.Uuid(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('blob_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['blob_id'], ['dataset_blobs.id'], name=op.f('fk_dataset_version_files_blob_id_dataset_blobs')),
    sa.ForeignKeyConstraint(['version_id'], ['dataset_versions.id'], name=op.f('fk_dataset_version_files_version_id_dataset_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('version_id', 'seq', name=op.f('pk_dataset_version_files'))
    )
    with op.batch_alter_table('dataset_version_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dataset_version_files_blob_id'), ['blob_id'], unique=False)

    op.create_table('job_inputs',
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('version_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_inputs_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['dataset_versions.id'], name=op.f('fk_job_inputs_version_id_dataset_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'version_id', name=op.f('pk_job_inputs'))
    )
    with op.batch_alter_table('job_inputs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_inputs_version_id'), ['version_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('job_inputs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_inputs_version_id'))

    op.drop_table('job_inputs')
    with op.batch_alter_table('dataset_version_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dataset_version_files_blob_id'))

    op.drop_table('dataset_version_files')
    with op.batch_alter_table('job_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_tokens_job_id'))

    op.drop_table('job_tokens')
    op.drop_table('job_lineage')
    with op.batch_alter_table('dataset_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dataset_versions_sha256'))
        batch_op.drop_index(batch_op.f('ix_dataset_versions_produced_by_job_id'))

    op.drop_table('dataset_versions')
    with op.batch_alter_table('dataset_blobs', schema=None) as batch_op:
        batch_op.drop_index('uq_dataset_blobs_store_sha256', sqlite_where=sa.text('store_id IS NOT NULL'), postgresql_where=sa.text('store_id IS NOT NULL'))
        batch_op.drop_index('uq_dataset_blobs_default_sha256', sqlite_where=sa.text('store_id IS NULL'), postgresql_where=sa.text('store_id IS NULL'))

    op.drop_table('dataset_blobs')
    with op.batch_alter_table('dataset_access', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dataset_access_user_id'))

    op.drop_table('dataset_access')
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_index('uq_datasets_org_id_name_live', sqlite_where=sa.text('deleted_at IS NULL'), postgresql_where=sa.text('deleted_at IS NULL'))

    op.drop_table('datasets')
    with op.batch_alter_table('data_stores', schema=None) as batch_op:
        batch_op.drop_index('ix_data_stores_org_id_active')

    op.drop_table('data_stores')
