"""covering indexes for console reads: usage sums of a month and fleet-wide 5-minute charts

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 07:20:38.388071
"""

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('rollup_5m', schema=None) as batch_op:
        batch_op.create_index('ix_rollup_5m_metric_bucket', ['metric', 'bucket', 'entity', 'count', 'sum'], unique=False)

    with op.batch_alter_table('usage_record', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_record_hour_source')
        batch_op.create_index('ix_usage_record_hour_source', ['hour', 'source', 'tenant_id', 'sku', 'unit', 'quantity'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('usage_record', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_record_hour_source')
        batch_op.create_index('ix_usage_record_hour_source', ['hour', 'source'], unique=False)

    with op.batch_alter_table('rollup_5m', schema=None) as batch_op:
        batch_op.drop_index('ix_rollup_5m_metric_bucket')
