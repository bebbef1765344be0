"""Redfish: how each node-hour's energy was measured (node_energy_hour.method: watts, counter,
mixed; existing hours were all integrated from watts) and the newest BMC log entry stored per
node and log (bmc_log_cursor), so a poll never stores an entry twice.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 12:46:10.066775
"""

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('bmc_log_cursor',
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('log', sa.String(length=255), nullable=False),
    sa.Column('entry', sa.String(length=255), nullable=False),
    sa.Column('created', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('node_id', 'log')
    )
    op.add_column('node_energy_hour', sa.Column('method', sa.String(length=8), server_default='watts', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('node_energy_hour', schema=None) as batch_op:
        batch_op.drop_column('method')
    op.drop_table('bmc_log_cursor')
