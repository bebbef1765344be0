"""firmware baselines: the version each component should run, per resource class or GPU model

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 12:44:29
"""

import sqlalchemy as sa
from alembic import op

from kiln.db import UTCDateTime

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'firmware_baseline',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('scope', sa.String(length=140), nullable=False),
        sa.Column('component', sa.String(length=64), nullable=False),
        sa.Column('version', sa.String(length=128), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.Column('updated_by', sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('scope', 'component'),
    )


def downgrade() -> None:
    op.drop_table('firmware_baseline')
