"""collectors: target states, worker heartbeats, health snapshots, rollups, energy, k8s and OpenCost allocations

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from kiln.db import UTCDateTime

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('collector_target_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('collector', sa.String(length=32), nullable=False),
    sa.Column('target', sa.String(length=255), nullable=False),
    sa.Column('up', sa.Boolean(), nullable=False),
    sa.Column('last_attempt_at', UTCDateTime(), nullable=True),
    sa.Column('last_success_at', UTCDateTime(), nullable=True),
    sa.Column('last_error', sa.String(length=2000), nullable=True),
    sa.Column('consecutive_failures', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('collector', 'target')
    )
    op.create_table('collector_worker',
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('started_at', UTCDateTime(), nullable=False),
    sa.Column('last_seen_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('owner')
    )
    with op.batch_alter_table('collector_worker', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_collector_worker_last_seen_at'), ['last_seen_at'], unique=False)

    op.create_table('k8s_allocation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('namespace', sa.String(length=253), nullable=False),
    sa.Column('tenant_slug', sa.String(length=63), nullable=True),
    sa.Column('pod', sa.String(length=253), nullable=False),
    sa.Column('pod_uid', sa.String(length=64), nullable=False),
    sa.Column('node_name', sa.String(length=253), nullable=True),
    sa.Column('resource', sa.String(length=64), nullable=False),
    sa.Column('quantity', sa.Numeric(precision=24, scale=6), nullable=False),
    sa.Column('starts_at', UTCDateTime(), nullable=False),
    sa.Column('ends_at', UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('pod_uid', 'resource')
    )
    with op.batch_alter_table('k8s_allocation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_k8s_allocation_namespace'), ['namespace'], unique=False)
        batch_op.create_index(batch_op.f('ix_k8s_allocation_starts_at'), ['starts_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_k8s_allocation_tenant_slug'), ['tenant_slug'], unique=False)

    op.create_table('opencost_allocation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('namespace', sa.String(length=253), nullable=False),
    sa.Column('window_start', UTCDateTime(), nullable=False),
    sa.Column('window_end', UTCDateTime(), nullable=False),
    sa.Column('cpu_core_hours', sa.Numeric(precision=24, scale=6), nullable=False),
    sa.Column('gpu_hours', sa.Numeric(precision=24, scale=6), nullable=False),
    sa.Column('ram_byte_hours', sa.Numeric(precision=30, scale=6), nullable=False),
    sa.Column('cpu_cost', sa.Numeric(precision=18, scale=6), nullable=False),
    sa.Column('gpu_cost', sa.Numeric(precision=18, scale=6), nullable=False),
    sa.Column('ram_cost', sa.Numeric(precision=18, scale=6), nullable=False),
    sa.Column('pv_cost', sa.Numeric(precision=18, scale=6), nullable=False),
    sa.Column('network_cost', sa.Numeric(precision=18, scale=6), nullable=False),
    sa.Column('shared_cost', sa.Numeric(precision=18, scale=6), nullable=False),
    sa.Column('total_cost', sa.Numeric(precision=18, scale=6), nullable=False),
    sa.Column('total_efficiency', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('namespace', 'window_start', 'window_end')
    )
    with op.batch_alter_table('opencost_allocation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_opencost_allocation_window_start'), ['window_start'], unique=False)

    op.create_table('rollup_5m',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('entity', sa.String(length=255), nullable=False),
    sa.Column('metric', sa.String(length=128), nullable=False),
    sa.Column('bucket', UTCDateTime(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('sum', sa.Float(), nullable=False),
    sa.Column('min', sa.Float(), nullable=False),
    sa.Column('max', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('entity', 'metric', 'bucket')
    )
    with op.batch_alter_table('rollup_5m', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollup_5m_bucket'), ['bucket'], unique=False)

    op.create_table('health_snapshot',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('entity', sa.String(length=255), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('metric', sa.String(length=128), nullable=False),
    sa.Column('labels_key', sa.String(length=512), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('unit', sa.String(length=32), nullable=False),
    sa.Column('state', sa.Integer(), nullable=True),
    sa.Column('observed_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('entity', 'metric', 'labels_key')
    )
    with op.batch_alter_table('health_snapshot', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_health_snapshot_entity'), ['entity'], unique=False)
        batch_op.create_index(batch_op.f('ix_health_snapshot_node_id'), ['node_id'], unique=False)

    op.create_table('node_energy_hour',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('hour', UTCDateTime(), nullable=False),
    sa.Column('kwh', sa.Numeric(precision=18, scale=6), nullable=False),
    sa.Column('covered_seconds', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('node_id', 'hour')
    )
    with op.batch_alter_table('node_energy_hour', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_node_energy_hour_hour'), ['hour'], unique=False)
        batch_op.create_index(batch_op.f('ix_node_energy_hour_node_id'), ['node_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('node_energy_hour', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_node_energy_hour_node_id'))
        batch_op.drop_index(batch_op.f('ix_node_energy_hour_hour'))

    op.drop_table('node_energy_hour')
    with op.batch_alter_table('health_snapshot', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_health_snapshot_node_id'))
        batch_op.drop_index(batch_op.f('ix_health_snapshot_entity'))

    op.drop_table('health_snapshot')
    with op.batch_alter_table('rollup_5m', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollup_5m_bucket'))

    op.drop_table('rollup_5m')
    with op.batch_alter_table('opencost_allocation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_opencost_allocation_window_start'))

    op.drop_table('opencost_allocation')
    with op.batch_alter_table('k8s_allocation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_k8s_allocation_tenant_slug'))
        batch_op.drop_index(batch_op.f('ix_k8s_allocation_starts_at'))
        batch_op.drop_index(batch_op.f('ix_k8s_allocation_namespace'))

    op.drop_table('k8s_allocation')
    with op.batch_alter_table('collector_worker', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_collector_worker_last_seen_at'))

    op.drop_table('collector_worker')
    op.drop_table('collector_target_state')
