"""gpu energy per hour: kWh per GPU-hour from the GPU exporters' energy counters

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 10:09:27.455028
"""

import sqlalchemy as sa
from alembic import op

from kiln.db import UTCDateTime
from kiln.types import ExactNumeric

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('gpu_energy_hour',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('entity', sa.String(length=255), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=True),
    sa.Column('hour', UTCDateTime(), nullable=False),
    sa.Column('kwh', ExactNumeric(precision=18, scale=6), nullable=False),
    sa.Column('covered_seconds', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('entity', 'hour')
    )
    with op.batch_alter_table('gpu_energy_hour', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_gpu_energy_hour_hour'), ['hour'], unique=False)
        batch_op.create_index(batch_op.f('ix_gpu_energy_hour_node_id'), ['node_id'], unique=False)

def downgrade() -> None:
    with op.batch_alter_table('gpu_energy_hour', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_gpu_energy_hour_node_id'))
        batch_op.drop_index(batch_op.f('ix_gpu_energy_hour_hour'))

    op.drop_table('gpu_energy_hour')
