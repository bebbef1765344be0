"""carbon intensity per zone and hour (gCO2e/kWh, imported or fetched), and a node's grid zone

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 11:00:00
"""

import sqlalchemy as sa
from alembic import op

from kiln.db import UTCDateTime
from kiln.types import ExactNumeric

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('carbon_intensity',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('zone', sa.String(length=64), nullable=False),
    sa.Column('hour', UTCDateTime(), nullable=False),
    sa.Column('g_co2e_per_kwh', ExactNumeric(precision=12, scale=3), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('zone', 'hour')
    )
    with op.batch_alter_table('carbon_intensity', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_carbon_intensity_hour'), ['hour'], unique=False)
    op.add_column('node', sa.Column('zone', sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Not batch mode: on SQLite that recreates `node`, and dropping it would fire the ON DELETE
    # CASCADE of every table referring to nodes (GPUs, tags, leases …). SQLite ≥ 3.35 drops a column in place.
    op.execute("ALTER TABLE node DROP COLUMN zone")
    with op.batch_alter_table('carbon_intensity', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_carbon_intensity_hour'))
    op.drop_table('carbon_intensity')
