"""lease_utilisation_day, utilisation_sealed: GPU utilisation summed per whole-node lease and UTC
day, and how far into each day the sums reach (collectors.utilisation_days).

Empty here: the worker's `utilisation-days` job sums the retained rollups, today first, a few days
a run; until a day is summed, readers compute it from `rollup_5m` as before.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-07 09:40:00
"""

import sqlalchemy as sa
from alembic import op

from kiln.db import UTCDateTime

revision = '0028'
down_revision = '0027'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('lease_utilisation_day',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('lease_id', sa.Integer(), nullable=False),
    sa.Column('measured_micros', sa.BigInteger(), nullable=False),
    sa.Column('used_micro_percent', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('day', 'lease_id')
    )
    op.create_table('utilisation_sealed',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('through', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('day')
    )


def downgrade() -> None:
    op.drop_table('utilisation_sealed')
    op.drop_table('lease_utilisation_day')
