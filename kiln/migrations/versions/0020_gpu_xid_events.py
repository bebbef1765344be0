"""gpu xid events: each new XID error a GPU exporter reported (the node page's XID timeline)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 16:02:23
"""

import sqlalchemy as sa
from alembic import op

from kiln.db import UTCDateTime

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'gpu_xid_event',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('entity', sa.String(length=255), nullable=False),
        sa.Column('node_id', sa.Integer(), nullable=True),
        sa.Column('at', UTCDateTime(), nullable=False),
        sa.Column('code', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['node_id'], ['node.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_gpu_xid_event_at', 'gpu_xid_event', ['at'])
    op.create_index('ix_gpu_xid_event_entity', 'gpu_xid_event', ['entity'])
    op.create_index('ix_gpu_xid_event_node_id', 'gpu_xid_event', ['node_id'])


def downgrade() -> None:
    op.drop_table('gpu_xid_event')
